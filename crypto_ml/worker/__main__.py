"""``python -m crypto_ml.worker start|ping``: the worker containers' command,
:mod:`crypto_ml.cli.worker` (``workers/worker.py`` is another spelling).

It runs that module in its place (``exec``: the same process, the interpreter's own options
kept), so that the worker layer imports nothing of the command line above it.
"""

import os
import sys

FLAGS = sys.orig_argv[1:sys.orig_argv.index("-m")] if "-m" in sys.orig_argv else []
os.execv(sys.executable, [sys.executable, *FLAGS, "-m", "crypto_ml.cli.worker", *sys.argv[1:]])
