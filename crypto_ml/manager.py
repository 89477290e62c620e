"""Historical entry point, kept as the product was first shown: ``python -m crypto_ml.manager
send-tasks`` and ``from crypto_ml.manager import CryptoManager``. A thin alias: the command is
:mod:`crypto_ml.cli` (``crypto-ml``), the manager :mod:`crypto_ml.dispatch.manager`.

Here ``CryptoManager()`` with no settings reads the environment (this module is an entry
point); :class:`crypto_ml.dispatch.manager.CryptoManager` takes its settings as an argument.

>>> CryptoManager().send_tasks(model="linear", coins=["bitcoin"])   # doctest: +SKIP
bitcoin [[1524.89418917 1525.92441381 ...]]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the command, started before the imports below (a Ctrl-C while
    from crypto_ml.__main__ import start  # they run is one line and exit 130)

    sys.exit(start("python -m crypto_ml.manager"))

from collections.abc import Mapping
from typing import Any, TextIO

from celery import Celery

from crypto_ml.core.settings import Settings, get_settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch import manager
from crypto_ml.dispatch.connect import check_broker
from crypto_ml.dispatch.report import RunObserver, RunReport, format_forecast
from crypto_ml.models import parse_models


class CryptoManager(manager.CryptoManager):
    """:class:`crypto_ml.dispatch.manager.CryptoManager`, its settings defaulting to the
    environment's (``CRYPTO_ML_*``)."""

    def __init__(self, loader: CryptoLoader | None = None, app: Celery | None = None,
                 settings: Settings | None = None, out: TextIO | None = None,
                 err: TextIO | None = None, observer: RunObserver | None = None,
                 cluster_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(loader, app, settings or get_settings(), out, err, observer,
                         cluster_options)


__all__ = ["CryptoManager", "RunObserver", "RunReport", "check_broker", "format_forecast",
           "parse_models"]
