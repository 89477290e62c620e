"""Price data: parsing untidy CSV/Parquet files, the folder layouts, the loader, the download.

Owns everything between a data folder (or one consolidated file) and a coin's
tidy price frame: :mod:`~crypto_ml.data.parsing` (one file's cells),
:mod:`~crypto_ml.data.layouts` (which files hold which coins),
:mod:`~crypto_ml.data.loader` (:class:`CryptoLoader`, by coin id),
:mod:`~crypto_ml.data.table` (long ``unique_id, ds, y`` tables, read in chunks; their files
in :mod:`~crypto_ml.data.table_files`, the checks their columns pass in
:mod:`~crypto_ml.data.table_checks`) and
:mod:`~crypto_ml.data.download` (fetching the top coins' history). May import
only :mod:`crypto_ml.core`; it knows nothing of models, Celery or the command line.
``python -m crypto_ml.data download`` is the ``crypto-ml data download`` command.
"""
