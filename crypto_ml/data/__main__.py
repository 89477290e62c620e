"""``python -m crypto_ml.data download``: the first spelling of ``crypto-ml data download``.

It runs that command in its place (``exec``: the same process, the interpreter's options
kept), so that the data layer imports nothing of the command line above it. A wrapper such
as ``python -m coverage run -m crypto_ml.data`` does not carry over: wrap ``-m crypto_ml
data`` instead.
"""

import os
import subprocess
import sys

# -I, -X, -W, -O... as multiprocessing passes them on (a private helper of subprocess's)
FLAGS: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()
os.execv(sys.executable, [sys.executable, *FLAGS, "-m", "crypto_ml", "data", *sys.argv[1:]])
