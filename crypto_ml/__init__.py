"""crypto-ml: distributed price forecasts for many cryptocurrency series.

``crypto_ml.app`` (also ``crypto_ml.celery``) is the Celery application that
``celery -A crypto_ml worker`` runs, configured from the environment when first
accessed, so importing the package reads no settings and starts nothing.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from crypto_ml.celery_app import default_app

        return default_app()
    raise AttributeError(f"module 'crypto_ml' has no attribute {name!r}")
