"""The worker side: the Celery app, the tasks, what a task message may hold, delivery counting.

Owns :mod:`~crypto_ml.worker.app` (the app of ``celery -A crypto_ml worker``, its
queues, routing and reliability settings), :mod:`~crypto_ml.worker.tasks` (the
forecast tasks), :mod:`~crypto_ml.worker.requests` (validation of what crosses the
wire, and running one request), :mod:`~crypto_ml.worker.deliveries` (bounded
redelivery), :mod:`~crypto_ml.worker.liveness` (heartbeats, and redelivering a dead
worker's tasks in seconds), :mod:`~crypto_ml.worker.acks` (an acknowledgement Redis did
not answer still frees its prefetch slot), :mod:`~crypto_ml.worker.imports` (a soft time limit waits for
an import under way, so a pool process keeps whole modules), :mod:`~crypto_ml.worker.launch`
(``python -m crypto_ml.worker.launch``: Celery's ``worker`` command on this app, what every
worker runs) and :mod:`~crypto_ml.worker.nodes` (the one place a worker's command line is
built, and the nodes a container starts for its cores and GPUs). May import
:mod:`crypto_ml.core` and :mod:`crypto_ml.models` only; the dispatcher imports it to build
requests, apps and worker commands, never the reverse. ``python -m crypto_ml.worker
start|ping``, the worker containers' entry point, is an alias of :mod:`crypto_ml.cli.worker`.
"""
