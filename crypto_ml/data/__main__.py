"""``python -m crypto_ml.data download``: the first spelling of ``crypto-ml data download``.

It runs that command in its place (``exec``: the same process, the interpreter's own options
kept), so that the data layer imports nothing of the command line above it.
"""

import os
import sys

FLAGS = sys.orig_argv[1:sys.orig_argv.index("-m")] if "-m" in sys.orig_argv else []
os.execv(sys.executable, [sys.executable, *FLAGS, "-m", "crypto_ml", "data", *sys.argv[1:]])
