"""Historical import path, kept as the product was first shown: ``from crypto_ml.data_loader
import CryptoLoader``. A thin re-export of :mod:`crypto_ml.data` (new code imports from there).

Here ``CryptoLoader()`` with no folder reads ``CRYPTO_ML_DATA_DIR`` and caches parsed files in
``CRYPTO_ML_CACHE_DIR`` (this module is an entry point); :class:`crypto_ml.data.loader.CryptoLoader`
takes both as arguments.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from crypto_ml.core.settings import get_settings
from crypto_ml.data import loader
from crypto_ml.data.parsing import BadFile, coin_id, parse_price_csv, read_raw_csv, tidy_prices


class CryptoLoader(loader.CryptoLoader):
    """:class:`crypto_ml.data.loader.CryptoLoader`, its folder defaulting to the settings'."""

    def __init__(self, data_dir: str | Path | None = None, max_points: int | None = None,
                 from_date: str | date | None = None, to_date: str | date | None = None) -> None:
        settings = get_settings()
        super().__init__(settings.data_dir if data_dir is None else data_dir,
                         max_points, from_date, to_date, cache_dir=settings.cache_dir)


__all__ = ["BadFile", "CryptoLoader", "coin_id", "parse_price_csv", "read_raw_csv", "tidy_prices"]
