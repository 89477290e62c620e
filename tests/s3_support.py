"""A real S3 HTTP endpoint for tests: moto's server in its own process (as MinIO would be)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from crypto_ml.ops.processes import free_port, wait_until


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[dict[str, str]]:
    """An S3 HTTP server in its own process, and the AWS_* variables that reach it (set in
    this process's environment while the module's tests run)."""
    pytest.importorskip("moto", reason="the S3 tests need moto's server: pip install -e '.[dev]'")
    import boto3

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
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return name
