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


def forecast(df: Any, model: str | None = None, horizon: int | None = None,
             levels: tuple[float, ...] | None = None, **options: Any) -> Any:
    """Forecast every series of a long-format DataFrame (``unique_id, ds, y``) or table path,
    in statsforecast's ``forecast()`` layout (``unique_id, ds, naive, naive-lo-80, ...``),
    on the cluster the environment names (``CRYPTO_ML_BROKER_URL``) or the embedded default.
    ``model``, ``horizon`` and ``levels`` default to :mod:`crypto_ml.models`' (naive, 10,
    80 and 95). ``options``: ``id_col``, ``time_col``, ``target_col``, ``max_points``,
    ``fallback_model`` (a cheap model's name: it forecasts the series a model fails on, as
    statsforecast's does), ``epochs``."""
    from crypto_ml.core.settings import Settings
    from crypto_ml.dispatch.frames import forecast_frame

    given: dict[str, Any] = {"model": model, "horizon": horizon, "levels": levels}
    return forecast_frame(df, Settings.from_env(), **{k: v for k, v in given.items()
                                                      if v is not None}, **options)


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from crypto_ml.worker.app import default_app  # lazy: importing crypto_ml starts nothing

        return default_app()
    raise AttributeError(f"module 'crypto_ml' has no attribute {name!r}")
