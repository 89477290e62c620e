"""``python -m crypto_ml.worker start|ping``: the worker containers' command,
:mod:`crypto_ml.cli.worker` (``workers/worker.py`` is another spelling).

It runs that module in its place (``exec``: the same process, the interpreter's options
kept), so that the worker layer imports nothing of the command line above it. A wrapper such
as ``python -m coverage run -m crypto_ml.worker`` does not carry over: wrap ``-m
crypto_ml.cli.worker`` instead.
"""

import os
import subprocess
import sys

# -I, -X, -W, -O... as multiprocessing passes them on (a private helper of subprocess's)
FLAGS: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()
os.execv(sys.executable, [sys.executable, *FLAGS, "-m", "crypto_ml.cli.worker", *sys.argv[1:]])
