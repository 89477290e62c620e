"""``python -m crypto_ml``: the ``crypto-ml`` command (see :mod:`crypto_ml.cli`)."""

import sys

from crypto_ml.cli import main

sys.exit(main(prog="python -m crypto_ml"))
