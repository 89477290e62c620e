"""The manager side: turn coins and models into task messages, send them, collect the results.

Owns :mod:`~crypto_ml.dispatch.manager` (:class:`CryptoManager`),
:mod:`~crypto_ml.dispatch.connect` (the embedded-or-broker choice, the broker check),
:mod:`~crypto_ml.dispatch.planning` (how forecasts are packed into messages),
:mod:`~crypto_ml.dispatch.report` (the :class:`RunReport` of a run, the observer
hooks, the output line), :mod:`~crypto_ml.dispatch.summary` (the closing summary)
and :mod:`~crypto_ml.dispatch.cluster` (the embedded Redis + workers). Two ways to send and
collect: the blocking :mod:`~crypto_ml.dispatch.engine` (the command line, table runs,
``crypto_ml.forecast``; with :mod:`~crypto_ml.dispatch.broker_errors`,
:mod:`~crypto_ml.dispatch.lost` (messages the broker lost, sent again) and
:mod:`~crypto_ml.dispatch.payloads`, a table chunk's values stored beside its message) and,
for the HTTP API's event loop, :mod:`~crypto_ml.dispatch.runs`
on asyncio (:mod:`~crypto_ml.dispatch.envelope`, :mod:`~crypto_ml.dispatch.async_results`,
:mod:`~crypto_ml.dispatch.async_lost`,
:mod:`~crypto_ml.dispatch.pipelined`, :mod:`~crypto_ml.dispatch.coalesce`,
:mod:`~crypto_ml.dispatch.background`): the same
messages, task ids, result keys and reports, waited for on pub/sub both. May import
:mod:`crypto_ml.core`, :mod:`~crypto_ml.models`, :mod:`~crypto_ml.data`,
:mod:`~crypto_ml.worker` and :mod:`~crypto_ml.ops`; not the backtest or the CLI.
"""
