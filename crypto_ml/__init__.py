"""crypto-ml: distributed price forecasts for many cryptocurrency series.

``crypto_ml.app`` (also ``crypto_ml.celery``) is the Celery application that
``celery -A crypto_ml worker`` runs, configured from the environment when first
accessed, so importing the package reads no settings and starts nothing.

The package is laid out by role, each folder's ``__init__`` saying what it owns
and what it may import (lower layers never import higher ones):
``core`` (errors, settings, logs, progress bar) < ``models`` and ``data`` <
``worker`` and ``ops`` < ``dispatch`` < ``backtest`` < ``cli``. ``crypto_ml.manager``
and ``crypto_ml.data_loader`` are thin aliases for the historical imports.
"""

from __future__ import annotations

import time
from typing import Any

__version__ = "0.1.0"
#: ``time.monotonic()`` when this process first imported the package: for a command, its
#: start (tens of milliseconds after the interpreter's). Not the process's start in /proc,
#: which is its fork: a shell that runs ``pip install ... && python -m ...`` as one
#: command may exec Python in the process that ran the install before it.
IMPORTED_AT = time.monotonic()


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from crypto_ml.worker.app import default_app  # lazy: importing crypto_ml starts nothing

        return default_app()
    raise AttributeError(f"module 'crypto_ml' has no attribute {name!r}")
