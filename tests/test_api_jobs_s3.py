"""Table jobs over HTTP from S3 (``POST /v1/jobs`` with ``input: s3://BUCKET/KEY``):
``python -m crypto_ml.api`` on its embedded cluster reads an object, or a prefix holding a
hive-partitioned dataset, from a real S3 endpoint (moto's server, as MinIO would be) with
the model store's credentials; its copy is gone when the job ends; a missing object or
bucket gets a 422 naming it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest
from s3_support import bucket
from table_support import random_walks
from test_api_server import Server, call, embedded_server

from crypto_ml.ops.processes import wait_until

pytestmark = pytest.mark.integration
pytest.importorskip("moto", reason="the S3 tests need moto's server: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def server(s3_endpoint: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    with embedded_server(tmp_path_factory.mktemp("api-jobs-s3"), **s3_endpoint) as running:
        yield running


def upload(frame: pd.DataFrame, name: str, key: str) -> None:
    body = io.BytesIO()
    frame.to_parquet(body, index=False)
    boto3.client("s3").put_object(Bucket=name, Key=key, Body=body.getvalue())


def finished(server: Server, job_id: str) -> dict[str, object]:
    seen: list[dict[str, object]] = []

    def done() -> bool:
        status, body = call(f"{server.url}/v1/jobs/{job_id}")
        assert status == 200, body
        seen.append(body)
        return body["status"] in ("done", "failed", "cancelled")

    wait_until(done, 120, "the job to finish")
    return seen[-1]


@pytest.mark.parametrize("layout", ["object", "dataset"])
def test_a_job_reads_its_table_from_s3(server: Server, layout: str) -> None:
    frame = random_walks(60, 30, seed=11)
    name = bucket(f"tables-{layout}")
    if layout == "object":
        upload(frame, name, "in/walks.parquet")
        uri = f"s3://{name}/in/walks.parquet"
    else:  # two hive partitions under a prefix
        ids = sorted(frame["unique_id"].unique())
        for part, chosen in (("a", ids[:30]), ("b", ids[30:])):
            upload(frame[frame["unique_id"].isin(chosen)], name, f"set/part={part}/0.parquet")
        uri = f"s3://{name}/set"
    status, accepted = call(f"{server.url}/v1/jobs", {"input": uri, "model": "naive",
                                                     "horizon": 2})
    assert status == 202, accepted
    final = finished(server, accepted["id"])
    assert final["status"] == "done" and final["done"] == 60, final
    got = pd.read_parquet(str(final["output"]))
    last = frame.groupby("unique_id")["y"].last()
    assert (got.groupby("unique_id")["naive"].first() == last).all()
    copy = Path(str(final["output"])).parent / "inputs" / accepted["id"]
    assert not copy.exists()  # the local copy went with the job


@pytest.mark.parametrize(("uri", "words"), [
    ("s3://tables-object/in/nosuch.parquet", "no object or prefix"),
    ("s3://no-such-bucket/x.parquet", "S3 says NoSuchBucket"),
    ("s3://", "name a bucket"),
])
def test_a_missing_s3_input_gets_422_naming_it(server: Server, uri: str, words: str) -> None:
    bucket("tables-object")
    status, reply = call(f"{server.url}/v1/jobs", {"input": uri})
    assert status == 422, reply
    assert words in reply["detail"][0]["msg"], reply
