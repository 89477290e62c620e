"""Table runs over HTTP (``/v1/jobs``), as an application uses them: ``python -m crypto_ml.api``
on its embedded cluster, a long table in its data directory, POST, poll, read the Parquet (or
download it: ``GET /v1/jobs/{id}/output`` and ``/failures``);
a bad path, model or table gets a 422 naming it; DELETE cancels a job and its queued work
goes (the queue-depth gauge falls to zero); an ``s3://`` input (an object, or a prefix holding a
hive-partitioned dataset) is read from a real S3 endpoint (moto's server, as MinIO would be)
with the model store's credentials, its copy gone when the job ends."""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pyarrow.parquet as pq
import pytest
from s3_support import bucket
from table_support import random_walks, write_parquet
from test_api_server import KEY, Server, call, embedded_server

from crypto_ml.core.errors import ConfigError
from crypto_ml.dispatch.table_output import held
from crypto_ml.ops.processes import wait_until

pytestmark = pytest.mark.integration
SERIES = 400


@pytest.fixture(scope="module")
def server(s3_endpoint: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    with embedded_server(tmp_path_factory.mktemp("api-jobs"), **s3_endpoint) as running:
        yield running


def data_dir(server: Server) -> Path:
    return server.log.parent / "prices"


def job_state(server: Server, job_id: str) -> dict[str, object]:
    status, body = call(f"{server.url}/v1/jobs/{job_id}")
    assert status == 200, body
    return body


def test_a_job_forecasts_a_table_into_parquet(server: Server) -> None:
    frame = random_walks(SERIES, 40, seed=3)
    write_parquet(frame, data_dir(server) / "walks.parquet")
    status, accepted = call(f"{server.url}/v1/jobs", {"input": "walks.parquet", "model": "naive",
                                                     "horizon": 3})
    assert status == 202, accepted
    seen: list[dict[str, object]] = []
    wait_until(lambda: seen.append(job_state(server, accepted["id"])) or
               seen[-1]["status"] in ("done", "failed", "cancelled"), 120, "the job to finish")
    final = seen[-1]
    assert final["status"] == "done" and final["done"] == SERIES and final["failed"] == 0, final
    got = pd.read_parquet(str(final["output"]))
    last = frame.groupby("unique_id")["y"].last()
    assert len(got) == SERIES * 3 and set(got["unique_id"]) == set(last.index)
    assert (got.groupby("unique_id")["naive"].first() == last).all()  # naive: the last value
    assert {"naive-lo-80", "naive-hi-95"} <= set(got.columns)
    # the output's record of its run names the input as given: no path of the server's
    metadata = pq.read_schema(str(final["output"])).metadata
    assert json.loads(metadata[b"crypto_ml.run"])["input"] == "walks.parquet"
    assert not any(str(data_dir(server)).encode() in value for value in metadata.values())


def test_a_job_s_fallback_model_fills_what_its_model_fails_on(server: Server) -> None:
    frame = random_walks(20, 30, seed=4)
    frame.loc[frame["unique_id"] == "s000003", "y"] *= -1  # ets fits logs: not this one
    write_parquet(frame, data_dir(server) / "signed.parquet")
    status, accepted = call(f"{server.url}/v1/jobs", {"input": "signed.parquet", "model": "ets",
                                                     "fallback_model": "naive", "horizon": 2})
    assert status == 202, accepted
    final = finished(server, accepted["id"])
    assert final["status"] == "done" and final["done"] == 20 and final["failed"] == 0, final
    got = pd.read_parquet(str(final["output"]))
    assert got["ets"].notna().all()
    failures = pd.read_parquet(str(final["failures_output"]))
    assert failures["unique_id"].tolist() == ["s000003"]
    assert failures["error"][0].startswith("filled by fallback naive: ")
    # a client that cannot see the server's disk downloads both tables
    for table, path in (("output", final["output"]), ("failures", final["failures_output"])):
        status, raw, kind = download(server, accepted["id"], table)
        assert status == 200 and kind == "application/vnd.apache.parquet", (status, raw[:200])
        assert raw == Path(str(path)).read_bytes()
        pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(raw)), pd.read_parquet(str(path)))
    status, raw, _ = download(server, accepted["id"], "output", headers={"Range": "bytes=0-3"})
    assert (status, raw) == (206, b"PAR1")  # a broken download goes on where it stopped
    whole = Path(str(final["output"])).read_bytes()
    for odd in ("garbage", "bytes=5-2", f"bytes={len(whole) + 10}-"):  # ignored: the whole file
        status, raw, kind = download(server, accepted["id"], "output", headers={"Range": odd})
        assert (status, raw, kind) == (200, whole, "application/vnd.apache.parquet"), odd
    head = urllib.request.Request(f"{server.url}/v1/jobs/{accepted['id']}/output", method="HEAD",
                                  headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(head, timeout=60) as reply:  # its size, before the download
        assert reply.status == 200 and reply.read() == b""
        assert int(reply.headers["Content-Length"]) == Path(str(final["output"])).stat().st_size
    assert download(server, accepted["id"], "output", key=None)[0] == 401
    assert download(server, "0" * 32, "output")[0] == 404
    Path(str(final["failures_output"])).unlink()  # cleared from the jobs folder by someone
    status, raw, _ = download(server, accepted["id"], "failures")
    assert status == 410 and b"no longer in the jobs folder" in raw, raw


def download(server: Server, job_id: str, table: str, key: str | None = KEY,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """``GET /v1/jobs/{id}/{table}``: the status, the body and its content type."""
    request = urllib.request.Request(f"{server.url}/v1/jobs/{job_id}/{table}",
                                     headers=headers or {})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read(), reply.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get_content_type()


@pytest.mark.parametrize(("body", "words"), [
    ({"input": "../../etc/passwd"}, "outside the server's data directory"),
    ({"input": "/etc/passwd"}, "is an absolute path; give a path relative to the server's data "
     "directory"),
    ({"input": "nosuch.parquet"}, "no input 'nosuch.parquet'"),
    ({"input": "alpha.csv"}, "input 'alpha.csv': no column 'unique_id'"),  # a price file
    ({"input": "bad"}, "input 'bad': p.parquet has no column 'y'"),
    ({"input": "walks.parquet", "value_col": "close"},
     "no column 'close' (it has unique_id, ds, y); name yours with id_col, time_col and "
     "value_col"),
    ({"input": "walks.parquet", "model": "prophet"}, "prophet"),
    ({"input": "walks.parquet", "fallback_model": "gru"}, "fallback_model: 'gru' is a deep model"),
    ({"input": "walks.parquet", "fallback_model": "x"}, "fallback_model: unknown model 'x'"),
    ({"input": "a\u0000b"}, "not a usable path"),
    ({"input": "x" * 5000}, "not a usable path"),
    ({"input": "loop1"}, "not a usable path (a symlink loop)"),
    ({"input": "looped"}, "which is not a usable path (a symlink loop)"),
    ({"input": "walks.parquet", "id_col": "ds"}, "must name three different columns"),
    ({"input": "walks.parquet", "id_col": "y", "value_col": "y"}, "three different columns"),
    # taken, then every series failed (CalibrationTooShort); send-tasks --input refused it
    ({"input": "walks.parquet", "max_points": 1}, "max_points 1 is too few: naive fits and "
     "calibrates its prediction intervals on at least 20 closes; give 20 or more, or 0 for"),
    ({"input": "walks.parquet", "max_points": 1, "levels": [], "model": "linear"},
     "max_points 1 is too few: linear fits on at least 2 closes"),
])
def test_a_bad_job_gets_422_naming_the_problem(server: Server, body: dict[str, object],
                                                words: str) -> None:
    write_parquet(random_walks(3, 10), data_dir(server) / "walks.parquet")
    (data_dir(server) / "alpha.csv").write_text((data_dir(server) / "Alpha.csv").read_text())
    (data_dir(server) / "bad").mkdir(exist_ok=True)
    write_parquet(random_walks(3, 10).drop(columns="y"), data_dir(server) / "bad" / "p.parquet")
    (data_dir(server) / "looped").mkdir(exist_ok=True)
    for link, to in (("loop1", "loop2"), ("loop2", "loop1"), ("looped/loopA", "loopB"),
                     ("looped/loopB", "loopA")):
        if not (data_dir(server) / link).is_symlink():
            (data_dir(server) / link).symlink_to(to)
    status, reply = call(f"{server.url}/v1/jobs", body)
    assert status == 422, reply
    assert words in reply["detail"][0]["msg"], reply
    assert str(data_dir(server).resolve()) not in str(reply)  # where the server keeps its data


def test_a_folder_holding_the_jobs_folder_is_no_input(tmp_path: Path) -> None:
    # a job wrote its output into its input folder, and every later job over it read that
    # output as a table of its own (no column 'ds'): the folder could not be run again
    jobs = tmp_path / "prices" / "sub" / "jobs"
    with embedded_server(tmp_path, CRYPTO_ML_API_JOBS_DIR=str(jobs)) as server:
        jobs.mkdir(parents=True)
        write_parquet(random_walks(3, 30), tmp_path / "prices" / "sub" / "t.parquet")
        pd.DataFrame({"unique_id": ["s"], "model": ["naive"], "error": ["x"]}).to_parquet(
            jobs / "old.failures.parquet")  # what an earlier job left there
        status, reply = call(f"{server.url}/v1/jobs", {"input": "sub"})
        assert status == 422, reply
        assert reply["detail"][0]["msg"] == (
            "input 'sub': it holds the server's job outputs (CRYPTO_ML_API_JOBS_DIR), which "
            "later jobs would read as series; give a file or a folder that does not hold them")
        status, accepted = call(f"{server.url}/v1/jobs", {"input": "sub/t.parquet"})
        assert status == 202, accepted
        wait_until(lambda: job_state(server, accepted["id"])["status"] == "done", 120, "the job")


def test_a_jobs_folder_that_cannot_be_written_is_503_and_said_at_start(tmp_path: Path) -> None:
    """A file in its place: every POST /v1/jobs answered a plain-text 500, the traceback in the
    log, while /healthz said ok (an outside probe)."""
    taken = tmp_path / "jobs-file"
    taken.write_text("not a folder\n")
    with embedded_server(tmp_path, CRYPTO_ML_API_JOBS_DIR=str(taken)) as server:
        write_parquet(random_walks(3, 30), tmp_path / "prices" / "t.parquet")
        status, reply = call(f"{server.url}/v1/jobs", {"input": "t.parquet"})
        assert status == 503, reply
        assert reply["detail"] == ("the server cannot keep job outputs now (its jobs folder, "
                                   "CRYPTO_ML_API_JOBS_DIR, cannot be written); its operator "
                                   "must mend it")  # where it keeps them: in its log alone
        log = server.log.read_text()
        assert f"warning: the server's jobs folder {taken}" in log and "Traceback" not in log
        assert f"POST /v1/jobs: the server's jobs folder {taken} (CRYPTO_ML_API_JOBS_DIR) " \
               "cannot be written" in log
        taken.unlink()  # mended: the next job runs, with no restart
        status, accepted = call(f"{server.url}/v1/jobs", {"input": "t.parquet"})
        assert status == 202, accepted
        wait_until(lambda: job_state(server, accepted["id"])["status"] == "done", 120, "the job")


def test_delete_cancels_a_job_and_its_queued_work_goes(server: Server) -> None:
    write_parquet(random_walks(3000, 60, seed=5), data_dir(server) / "slow.parquet")
    status, accepted = call(f"{server.url}/v1/jobs", {"input": "slow.parquet", "model": "ets"})
    assert status == 202, accepted
    wait_until(lambda: job_state(server, accepted["id"])["done"] > 0, 120, "the job's first chunk")
    status, raw, _ = download(server, accepted["id"], "output")
    assert status == 409 and b"is running" in raw, raw  # no half a table
    # a send-tasks run to the job's file is refused: a job held no lock, and --overwrite
    # deleted its parts under it
    with pytest.raises(ConfigError, match="another run is writing it now"), \
            held(Path(str(job_state(server, accepted["id"])["output"]))):
        pass
    status, reply = call(f"{server.url}/v1/jobs/{accepted['id']}", method="DELETE")
    assert status == 200 and reply["cancel_requested"] is True, reply  # it says it was heard
    assert reply["status"] in ("queued", "running", "cancelled"), reply
    wait_until(lambda: job_state(server, accepted["id"])["status"] == "cancelled", 60,
               "the job to stop")
    final = job_state(server, accepted["id"])
    output = Path(str(final["output"]))
    assert final["done"] < 3000 and not output.exists()
    status, raw, _ = download(server, accepted["id"], "failures")
    assert status == 409 and b"is cancelled: it has no failures table" in raw, raw
    assert not output.with_name(f".{output.name}.parts").exists()  # a job is never resumed
    wait_until(lambda: queued(server) == 0, 60, "the job's queued work revoked or done")
    assert call(f"{server.url}/v1/jobs/nosuchjob")[0] == 404


def queued(server: Server) -> int:
    request = urllib.request.Request(f"{server.url}/metrics")
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read().decode()
    return sum(int(float(n)) for n in re.findall(r'crypto_ml_api_queue_depth\{queue="\w+"\} (\S+)',
                                                 text))


def test_jobs_need_the_key(server: Server) -> None:
    assert call(f"{server.url}/v1/jobs", {"input": "walks.parquet"}, key=None)[0] == 401
    assert call(f"{server.url}/v1/jobs/x", key="wrong")[0] == 401


def upload(frame: pd.DataFrame, name: str, key: str) -> None:
    body = io.BytesIO()
    frame.to_parquet(body, index=False)
    boto3.client("s3").put_object(Bucket=name, Key=key, Body=body.getvalue())


def finished(server: Server, job_id: str) -> dict[str, object]:
    seen: list[dict[str, object]] = []
    wait_until(lambda: seen.append(job_state(server, job_id)) or
               seen[-1]["status"] in ("done", "failed", "cancelled"), 120, "the job to finish")
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
    # the run a job records names the objects, not its copy: a resume finds it the same
    status, again = call(f"{server.url}/v1/jobs", {"input": uri, "model": "naive",
                                                  "horizon": 2})
    assert status == 202, again
    run = [json.loads(pq.read_schema(str(finished(server, job_id)["output"])).metadata[
        b"crypto_ml.run"]) for job_id in (accepted["id"], again["id"])]
    assert run[0] == run[1] and run[0]["input"] == uri, run


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


def test_a_server_without_s3_credentials_says_so_not_that_s3_is_out_of_reach() -> None:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from crypto_ml.api.inputs import _unreadable

    said = str(_unreadable("s3://b/k", NoCredentialsError()))
    assert "the server has no S3 credentials" in said and "network" not in said
    said = str(_unreadable("s3://b/k", EndpointConnectionError(endpoint_url="http://s3:9")))
    assert "cannot reach S3" in said and "AWS_ENDPOINT_URL_S3" in said
