"""``python -m crypto_ml.worker start|ping``: the worker containers' entry point, an alias of
:mod:`crypto_ml.cli.worker` (``workers/worker.py`` is another)."""

import sys

from crypto_ml.cli.worker import main

sys.exit(main())
