"""The worker app as it was before issue 12: prefetch on (``celery -A hoarding_app``), for
the drift experiment in tests/hoarding.py only."""

from crypto_ml.worker.app import default_app

app = default_app()
app.conf.worker_disable_prefetch = False
