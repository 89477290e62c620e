"""The HTTP API: forecasts on the cluster for applications (``python -m crypto_ml.api``).

* :mod:`crypto_ml.api.app`: the FastAPI app (API keys, body cap, error bodies, metrics);
* :mod:`crypto_ml.api.routes`: the routes, one router per concern;
* :mod:`crypto_ml.api.schemas`: request and response bodies;
* :mod:`crypto_ml.api.service`: body checks and where runs go (cluster or in-process);
* :mod:`crypto_ml.api.metrics`: Prometheus metrics.

The command (embedded cluster when no broker is set) is :mod:`crypto_ml.api.__main__`,
an entry point above every layer. Dispatch goes through
:mod:`crypto_ml.dispatch.runs` (submit now, read later) over the same tasks and
queues as ``send-tasks``. A top layer beside the CLI: may import every part of
crypto_ml but :mod:`crypto_ml.cli` (its entry point uses the CLI's options) and reads
no settings from the environment.
"""
