"""``python -m crypto_ml.worker.launch [celery worker options]``: ``celery -A crypto_ml worker``
for the embedded cluster, without the ``celery`` command group.

The group imports every ``celery.commands`` plugin (Flower, and click-repl with
prompt-toolkit for ``celery shell``) before it runs any subcommand: about a third of a
worker's start-up. This runs Celery's own ``worker`` command with the same options, on
:data:`crypto_ml.app`. Every worker that crypto-ml starts runs it, with the command line that
:func:`crypto_ml.worker.nodes.command` builds (containers and the embedded cluster alike).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from celery.bin.base import CLIContext
from celery.bin.worker import worker

from crypto_ml.core.errors import ConfigError
from crypto_ml.core.logs import error_line
from crypto_ml.worker.app import default_app
from crypto_ml.worker.nodes import PARENT_ENV

#: Seconds a worker whose owner is gone leaves its warm shutdown before it ends its group.
ORPHAN_GRACE = 5.0


def end_with(parent: int, poll: float = 1.0) -> None:
    """When process ``parent`` is gone (killed without stopping its cluster), end this worker
    and its pool (its process group: the cluster starts each worker in its own session). The
    SIGTERM the kernel sends it then (PR_SET_PDEATHSIG) starts a warm shutdown that waits on
    the broker, which was the owner's embedded Redis and is gone too."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        time.sleep(ORPHAN_GRACE)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the worker with ``argv`` (``celery worker``'s options); exits with its code."""
    if os.environ.get(PARENT_ENV, "").isdigit():  # read here, at the worker's edge
        end_with(int(os.environ[PARENT_ENV]))
    try:
        app = default_app()
    except ConfigError as exc:  # no broker, a wrong setting: one line, not Celery's traceback
        print(error_line(f"crypto-ml: error: {exc}"), file=sys.stderr)
        raise SystemExit(2) from None
    obj = CLIContext(app=app, no_color=None, workdir=None, quiet=False)
    worker.main(args=list(sys.argv[1:] if argv is None else argv), obj=obj,
                prog_name="celery -A crypto_ml worker")


if __name__ == "__main__":
    main()
