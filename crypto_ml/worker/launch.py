"""``python -m crypto_ml.worker.launch [celery worker options]``: ``celery -A crypto_ml worker``
for the embedded cluster, without the ``celery`` command group.

The group imports every ``celery.commands`` plugin (Flower, and click-repl with
prompt-toolkit for ``celery shell``) before it runs any subcommand: about a third of a
worker's start-up. This runs Celery's own ``worker`` command with the same options, on
:data:`crypto_ml.app`. Every worker that crypto-ml starts runs it, with the command line that
:func:`crypto_ml.worker.nodes.command` builds (containers and the embedded cluster alike).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from celery.bin.base import CLIContext
from celery.bin.worker import worker

from crypto_ml.worker.app import default_app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the worker with ``argv`` (``celery worker``'s options); exits with its code."""
    obj = CLIContext(app=default_app(), no_color=None, workdir=None, quiet=False)
    worker.main(args=list(sys.argv[1:] if argv is None else argv), obj=obj,
                prog_name="celery -A crypto_ml worker")


if __name__ == "__main__":
    main()
