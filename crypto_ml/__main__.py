"""``python -m crypto_ml`` and the ``crypto-ml`` script: the command (:mod:`crypto_ml.cli`),
started so that a Ctrl-C while it imports is one line and exit 130, not a traceback."""

from __future__ import annotations

import signal
import sys

from crypto_ml.core.errors import caused_by_interrupt


def start(prog: str = "crypto-ml") -> int:
    """Import the command line, then run it on ``sys.argv``; its exit code."""
    try:
        from crypto_ml.cli import main
    except (KeyboardInterrupt, Exception) as exc:
        if not caused_by_interrupt(exc):
            raise
        print("crypto-ml: interrupted; nothing was started", file=sys.stderr)
        return 128 + signal.SIGINT
    return main(prog=prog)


if __name__ == "__main__":
    sys.exit(start("python -m crypto_ml"))
