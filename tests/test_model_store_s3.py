"""The model store in an S3-compatible bucket (``CRYPTO_ML_MODEL_STORE=s3://bucket/prefix``),
against a real S3 HTTP endpoint on this machine (moto's server, as MinIO would be): the
store's round trip, expiry and errors, and two real celery workers sharing trained LSTMs
through the bucket."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest
from s3_support import bucket

from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.worker.app import create_app
from crypto_ml.worker.model_store import S3ModelStore, StoreUnavailable, open_store
from crypto_ml.worker.requests import ForecastRequest

pytest.importorskip("moto", reason="the S3 tests need moto's server: pip install -e '.[dev]'")
boto3 = pytest.importorskip("boto3")

SERIES = list(100.0 + np.cumsum(np.random.default_rng(5).normal(0, 1, 40)) + np.arange(40))


def test_s3_store_round_trip_expiry_and_errors(s3_endpoint: dict[str, str]) -> None:
    store = open_store(f"s3://{bucket('round-trip')}/models/v1", None, ttl=60)
    assert isinstance(store, S3ModelStore)
    assert store.get("k") is None
    store.put("k", b"entry")
    assert store.get("k") == b"entry"
    listed = boto3.client("s3").list_objects_v2(Bucket="round-trip")["Contents"]
    assert [o["Key"] for o in listed] == ["models/v1/k.npz"]
    later = S3ModelStore(store.client, "round-trip", "models/v1", ttl=60,
                         clock=lambda: time.time() + 120)
    assert later.get("k") is None  # older than the TTL: retrained
    missing = S3ModelStore(store.client, "no-such-bucket", "m")
    with pytest.raises(StoreUnavailable, match=r"s3://no-such-bucket/m: .*NoSuchBucket"):
        missing.put("k", b"x")
    with pytest.raises(StoreUnavailable, match="no-such-bucket"):
        missing.get("k")


@pytest.mark.integration
def test_workers_share_trained_lstms_through_the_bucket(s3_endpoint: dict[str, str]) -> None:
    spec = f"s3://{bucket('shared-models')}/lstm"
    env = {**os.environ, **s3_endpoint, "CRYPTO_ML_MODEL_STORE": spec}
    request = ForecastRequest("s3-coin", "lstm", SERIES, 4, None, {"epochs": 1, "window": 8})
    with LocalCluster(workers=2, loglevel="WARNING", env=env) as cluster:
        settings = Settings().with_broker(cluster.broker_url)
        manager = CryptoManager(app=create_app(settings), settings=settings)

        def forecast() -> dict[str, Any]:
            report = manager.dispatch([request], timeout=300)
            assert report.failed == {}, report.failed
            return dict(report.results["s3-coin"]["lstm"])

        first = forecast()
        assert first["from_store"] is False
        (entry,) = boto3.client("s3").list_objects_v2(Bucket="shared-models")["Contents"]
        assert entry["Key"].startswith("lstm/") and entry["Key"].endswith(".npz")
        second = forecast()  # either worker: the entry is in the bucket, not in a process
        assert second["from_store"] is True and second["forecast"] == first["forecast"]
