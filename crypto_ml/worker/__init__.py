"""The worker side: the Celery app, the tasks, what a task message may hold, delivery counting.

Owns :mod:`~crypto_ml.worker.app` (the app of ``celery -A crypto_ml worker``, its
queues, routing and reliability settings), :mod:`~crypto_ml.worker.tasks` (the
forecast tasks), :mod:`~crypto_ml.worker.requests` (validation of what crosses the
wire, and running one request) and :mod:`~crypto_ml.worker.deliveries` (bounded
redelivery). May import :mod:`crypto_ml.core` and :mod:`crypto_ml.models` only;
the dispatcher imports it to build requests and apps, never the reverse.
"""
