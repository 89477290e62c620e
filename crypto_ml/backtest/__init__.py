"""Backtests: how good each model was, per coin, and the best model of each coin.

Owns the walk-forward engine (:mod:`~crypto_ml.backtest.engine`), the error
metrics (:mod:`~crypto_ml.backtest.metrics`), the tables and files
(:mod:`~crypto_ml.backtest.report`), ``--model best``
(:mod:`~crypto_ml.backtest.best`) and the shape of a saved backtest it reads
(:mod:`~crypto_ml.backtest.saved`). Every fit is an ordinary forecast task sent by
the dispatcher, so it may import :mod:`crypto_ml.dispatch` and what that may
import; not the CLI.
"""
