"""``python -m crypto_ml.data download``: an alias of ``crypto-ml data download``."""

import sys

from crypto_ml.cli import main

sys.exit(main(["data", *sys.argv[1:]]))
