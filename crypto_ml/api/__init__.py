"""The HTTP API: forecasts on the cluster for applications (``python -m crypto_ml.api``).

* :mod:`crypto_ml.api.app`: the FastAPI app (routes, API keys, body cap, metrics);
* :mod:`crypto_ml.api.schemas`: request and response bodies;
* :mod:`crypto_ml.api.service`: body checks and where runs go (cluster or in-process);
* :mod:`crypto_ml.api.metrics`: Prometheus metrics;
* :mod:`crypto_ml.api.__main__`: the command (embedded cluster when no broker is set).

Dispatch goes through :mod:`crypto_ml.runs` (submit now, read later) over the same
tasks and queues as ``send-tasks``; nothing here knows model internals.
"""
