"""The HTTP API: forecasts on the cluster for applications (``python -m crypto_ml.api``).

* :mod:`crypto_ml.api.app`: the FastAPI app (API keys, body cap, error bodies, metrics);
* :mod:`crypto_ml.api.routes`: the routes, one router per concern;
  :mod:`crypto_ml.api.fast_path` answers the well-formed ``POST /v1/forecasts`` in front of
  FastAPI's route (the same answer, less CPU), handing anything else on to it;
* :mod:`crypto_ml.api.schemas`: request and response bodies;
* :mod:`crypto_ml.api.service`: body checks and where runs go (cluster or in-process);
* :mod:`crypto_ml.api.metrics`: Prometheus metrics;
* :mod:`crypto_ml.api.jobs`: table jobs (``/v1/jobs``), run by threads of the API process;
  :mod:`crypto_ml.api.job_store` their records in Redis, :mod:`crypto_ml.api.job_files` their
  chunks on the shared jobs folder (resume, clean-up), :mod:`crypto_ml.api.inputs` their input
  (a path of the data directory, or S3).

The command (embedded cluster when no broker is set) is :mod:`crypto_ml.api.__main__`,
an entry point above every layer. Dispatch goes through
:mod:`crypto_ml.dispatch.runs` (submit now, read later) over the same tasks and
queues as ``send-tasks``. A top layer beside the CLI: may import every part of
crypto_ml but :mod:`crypto_ml.cli` (its entry point uses the CLI's options) and reads
no settings from the environment.
"""
