"""The model store in an S3-compatible bucket (``CRYPTO_ML_MODEL_STORE=s3://bucket/prefix``),
against a real S3 HTTP endpoint on this machine (moto's server, as MinIO would be): the
store's round trip, expiry and errors, and two real celery workers sharing trained LSTMs
through the bucket."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.ops.processes import free_port, wait_until
from crypto_ml.worker.app import create_app
from crypto_ml.worker.model_store import S3ModelStore, StoreUnavailable, open_store
from crypto_ml.worker.requests import ForecastRequest

pytest.importorskip("moto", reason="the S3 tests need moto's server: pip install -e '.[dev]'")
boto3 = pytest.importorskip("boto3")

SERIES = list(100.0 + np.cumsum(np.random.default_rng(5).normal(0, 1, 40)) + np.arange(40))


@pytest.fixture(scope="module")
def endpoint() -> Iterator[dict[str, str]]:
    """An S3 HTTP server in its own process, and the AWS_* variables that reach it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            client = boto3.client("s3")
            wait_until(lambda: _answers(client), 30, "starting the S3 server",
                       lambda: None if server.poll() is None else f"exit {server.returncode}")
            yield env
    finally:
        server.terminate()
        server.wait(10)


def _answers(client: Any) -> bool:
    try:
        client.list_buckets()
        return True
    except Exception:
        return False


def bucket(name: str) -> str:
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_s3_store_round_trip_expiry_and_errors(endpoint: dict[str, str]) -> None:
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
def test_workers_share_trained_lstms_through_the_bucket(endpoint: dict[str, str]) -> None:
    spec = f"s3://{bucket('shared-models')}/lstm"
    env = {**os.environ, **endpoint, "CRYPTO_ML_MODEL_STORE": spec}
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
