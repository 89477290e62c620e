"""The manager side: turn coins and models into task messages, send them, collect the results.

Owns :mod:`~crypto_ml.dispatch.manager` (:class:`CryptoManager`),
:mod:`~crypto_ml.dispatch.connect` (the embedded-or-broker choice, the broker check),
:mod:`~crypto_ml.dispatch.planning` (how forecasts are packed into messages),
:mod:`~crypto_ml.dispatch.report` (the :class:`RunReport` of a run, the observer
hooks, the output line), :mod:`~crypto_ml.dispatch.summary` (the closing summary)
and :mod:`~crypto_ml.dispatch.cluster` (the embedded Redis + workers). May import
:mod:`crypto_ml.core`, :mod:`~crypto_ml.models`, :mod:`~crypto_ml.data`,
:mod:`~crypto_ml.worker` and :mod:`~crypto_ml.ops`; not the backtest or the CLI.
"""
