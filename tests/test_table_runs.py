"""Table runs as a user starts them: ``send-tasks --input TABLE --output OUT.parquet`` and
``crypto_ml.forecast(df)``, on real Redis and real celery workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import ROOT, cli_env, run_cli
from fault_helpers import META_PREFIX, app_for, stop_consuming, wait_for_drained, worker_logs
from table_support import coin_windows, random_walks, write_parquet

import crypto_ml
from crypto_ml.core import keys
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.engine import payload_seconds, redelivery_bound, stable_task_id
from crypto_ml.dispatch.payloads import store_payload
from crypto_ml.dispatch.table_output import RUN_ID
from crypto_ml.dispatch.table_run import TablePlan
from crypto_ml.models import get_model
from crypto_ml.ops.processes import free_port, wait_until
from crypto_ml.worker.chunks import TABLE_TASK_NAME, chunk_kwargs

pytestmark = pytest.mark.integration


def _table(price_data: Path, tmp_path: Path, series: int = 120, length: int = 60,
           short: int = 1) -> Path:
    """Coin windows, and a series ``zz-short`` of ``short`` closes (1.4, 1.5, ...)."""
    frame = coin_windows(price_data, series, length)
    short = pd.DataFrame({"unique_id": ["zz-short"] * short, "y": 1.4 + 0.1 * np.arange(short),
                          "ds": pd.date_range(end="2017-09-01", periods=short, freq="D")})
    return write_parquet(pd.concat([frame, short], ignore_index=True), tmp_path / "in.parquet")


def test_a_table_run_writes_the_statsforecast_layout_and_lists_failures(
        cluster, price_data: Path, tmp_path: Path) -> None:
    table = _table(price_data, tmp_path)
    out = tmp_path / "out.parquet"
    done = run_cli("send-tasks", "--input", str(table), "--output", str(out), "--model",
                   "naive,linear", "--horizon", "5", "--broker", cluster.broker_url,
                   "--chunk-series", "25")
    assert done.returncode == 1, done.stderr  # the 1-close series' forecasts failed
    assert done.stdout == ""
    got = pd.read_parquet(out)
    assert list(got.columns) == ["unique_id", "ds", "naive", "naive-lo-80", "naive-hi-80",
                                 "naive-lo-95", "naive-hi-95", "linear", "linear-lo-80",
                                 "linear-hi-80", "linear-lo-95", "linear-hi-95"]
    assert got["unique_id"].nunique() == 121 and len(got) == 121 * 5
    failures = pd.read_parquet(tmp_path / "out.failures.parquet")
    assert failures[["unique_id", "model"]].values.tolist() == [["zz-short", "naive"],
                                                                 ["zz-short", "linear"]]
    assert "no daily change to size its intervals" in failures["error"][0]  # not 0 wide
    assert "SeriesTooShort" in failures["error"][1]
    assert got[got["unique_id"] == "zz-short"].iloc[:, 2:].isna().all().all()
    frame = pd.read_parquet(table)
    for uid in frame["unique_id"].drop_duplicates().sample(3, random_state=0):
        series = frame[frame["unique_id"] == uid]
        alone = get_model("linear").fit(series["y"].to_numpy()).predict(5)
        rows = got[got["unique_id"] == uid]
        np.testing.assert_allclose(rows["linear"], alone.forecast, rtol=1e-9)
        np.testing.assert_allclose(rows["linear-lo-95"], alone.bands["95"][0], rtol=1e-9)
        next_days = pd.date_range(series["ds"].max(), periods=6, freq="D")[1:]
        assert pd.to_datetime(rows["ds"]).tolist() == next_days.tolist()
    assert "summary: 121 series" in done.stderr and f"wrote {out}" in done.stderr


def test_a_fallback_model_forecasts_the_series_a_model_fails_on(
        cluster, price_data: Path, tmp_path: Path) -> None:
    table = _table(price_data, tmp_path, series=30, short=3)  # too short for ets
    out = tmp_path / "out.parquet"
    done = run_cli("send-tasks", "--input", str(table), "--output", str(out), "--model",
                   "ets", "--fallback-model", "naive", "--horizon", "5", "--broker",
                   cluster.broker_url)
    assert done.returncode == 0, done.stderr  # every series has a forecast
    got = pd.read_parquet(out)
    assert got["ets"].notna().all() and len(got) == 31 * 5
    short = got[got["unique_id"] == "zz-short"]
    alone = get_model("naive").fit(np.array([1.4, 1.5, 1.6])).predict(5)
    np.testing.assert_allclose(short["ets"], alone.forecast)
    np.testing.assert_allclose(short["ets-hi-95"], alone.bands["95"][1])
    failures = pd.read_parquet(tmp_path / "out.failures.parquet")
    assert failures[["unique_id", "model"]].values.tolist() == [["zz-short", "ets"]]
    assert failures["error"][0].startswith("filled by fallback naive: SeriesTooShort")
    assert "(0 failed forecast(s), 1 filled by the fallback model)" in done.stderr
    # the run recorded its fallback: the same output without it is another run
    again = run_cli("send-tasks", "--input", str(table), "--output", str(out), "--model",
                    "ets", "--horizon", "5", "--broker", cluster.broker_url)
    assert again.returncode == 2, again.stderr
    assert "(--fallback-model was naive (200 closes), now none)" in again.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--fallback-model", "lstm"], "--fallback-model: 'lstm' is a deep model"),
    (["--fallback-model", "naive,ets"], "--fallback-model: a fallback is one model, got naive, ets"),
    (["--fallback-model", "AutoETS"], "statsforecast's AutoETS is 'ets' here"),
    (["--fallback-model", "prophet"], "choose from naive, linear, ets, theta, arima\n"),
    (["--model", "ets", "--fallback-model", "ets"], "'ets' is the model it would stand in for"),
    (["--model", "linear", "--max-points", "5"],  # as a folder run refuses it
     "--max-points 5 is too few: linear fits and calibrates its prediction intervals on at "
     "least 20 closes"),
])
def test_a_bad_fallback_model_exits_2_before_any_cluster(tmp_path: Path, args: list[str],
                                                         words: str) -> None:
    table = write_parquet(random_walks(3, 20), tmp_path / "t.parquet")
    done = run_cli("send-tasks", "--input", str(table), "--output", str(tmp_path / "o.parquet"),
                   *args)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    folder = run_cli("send-tasks", "--fallback-model", "naive")
    assert folder.returncode == 2 and "--fallback-model is for table runs" in folder.stderr


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "crypto_ml", *args], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stopped_after_three_chunks(args: list[str], out: Path, sig: signal.Signals
                                ) -> tuple[int, str]:
    """Run ``send-tasks ARGS --output OUT`` and send it ``sig`` once three of its chunks
    are written; its exit code and stderr."""
    parts = out.with_name(f".{out.name}.parts")
    run = _start([*args, "--output", str(out)])
    try:
        wait_until(lambda: len(list(parts.glob("chunk-*.arrow"))) >= 3 or run.poll() is not None,
                   120, "three chunks written")
        run.send_signal(sig)
    finally:
        _, err = run.communicate(timeout=30)
    return run.returncode, err


def test_a_killed_manager_s_embedded_cluster_ends_with_it(tmp_path: Path) -> None:
    """SIGKILL of a run on the embedded cluster (no broker set): its Redis and workers go too.
    Before, the workers' warm shutdown waited on the dead Redis and they stayed, orphaned."""
    table = write_parquet(random_walks(3000, 60, seed=5), tmp_path / "slow.parquet")
    out = tmp_path / "out.parquet"
    parts = out.with_name(f".{out.name}.parts")
    run = _start(["send-tasks", "--input", str(table), "--output", str(out), "--model", "ets"])
    try:
        wait_until(lambda: any(parts.glob("chunk-*.arrow")) or run.poll() is not None, 120,
                   "a first chunk written")
        cluster = psutil.Process(run.pid).children(recursive=True)
        assert len(cluster) >= 3  # a Redis and two workers at least
        run.kill()
    finally:
        run.communicate(timeout=30)
    wait_until(lambda: not [p for p in cluster if p.is_running()
                            and p.status() != psutil.STATUS_ZOMBIE], 30,
               "the embedded cluster's processes to end with their manager")


def test_a_killed_manager_resumes_without_recomputing_or_doubling(
        cluster, tmp_path: Path) -> None:
    table = write_parquet(random_walks(1500, 40), tmp_path / "in.parquet")
    args = ["send-tasks", "--input", str(table), "--model", "theta", "--horizon", "3",
            "--broker", cluster.broker_url, "--chunk-series", "15", "--in-flight", "1"]
    whole = run_cli(*args, "--output", str(tmp_path / "whole.parquet"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "resumed.parquet"
    parts = tmp_path / ".resumed.parquet.parts"
    _stopped_after_three_chunks(args, out, signal.SIGKILL)  # the manager dies mid-run
    written = len(list(parts.glob("chunk-*.arrow")))
    assert 3 <= written < 100 and not out.exists()
    sent = [stable_task_id((parts / RUN_ID).read_text().strip(), key) for key in range(100)]
    chunks_before = _chunk_tasks(cluster)
    again = run_cli(*args, "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{written * 15} written by an earlier run" in again.stderr
    resumed, expected = pd.read_parquet(out), pd.read_parquet(tmp_path / "whole.parquet")
    pd.testing.assert_frame_equal(resumed, expected)
    assert not resumed.duplicated(["unique_id", "ds"]).any() and len(resumed) == 1500 * 3
    assert not parts.exists()
    # the chunk the killed manager had in flight was taken by the resumed run (same run id,
    # same task id), not computed for nobody: no chunk's result is left in Redis
    wait_for_drained(cluster)
    ran = _chunk_tasks(cluster) - chunks_before
    client = cluster.client()
    assert ran and not [t for t in ran if client.exists(f"{META_PREFIX}{t}")]
    # nor any chunk's values: the resumed run freed what it read and what the first one sent
    assert not [t for t in sent if client.exists(keys.PAYLOAD + t)]


def test_a_run_stopped_with_ctrl_c_resumes_on_workers_that_saw_it_stop(
        cluster, tmp_path: Path) -> None:
    # the stopped run revoked its queued chunks and told the workers it had ended; the
    # workers are still up (a --broker cluster), so the resumed run must not look like it
    table = write_parquet(random_walks(1200, 40, seed=7), tmp_path / "in.parquet")
    args = ["send-tasks", "--input", str(table), "--model", "theta", "--horizon", "3",
            "--broker", cluster.broker_url, "--chunk-series", "15", "--in-flight", "2"]
    whole = run_cli(*args, "--output", str(tmp_path / "whole.parquet"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "resumed.parquet"
    returncode, err = _stopped_after_three_chunks(args, out, signal.SIGINT)
    assert returncode == 130 and re.search(r"^.*revoked \d+ queued task\(s\)$", err, re.M), err
    assert "local cluster" not in err, err  # it ran on the test's broker: none was started
    again = run_cli(*args, "--output", str(out), "--timeout", "120")
    assert again.returncode == 0, again.stderr
    assert "written by an earlier run" in again.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "whole.parquet"))


def test_a_chunk_whose_values_are_gone_fails_saying_what_to_do(cluster) -> None:
    kwargs = chunk_kwargs(TablePlan.of(["naive"], 3, ()).models, 3, (), np.array([5]),
                          np.arange(1.0, 6.0))
    del kwargs["values"]  # sent as a table run sends it, with nothing stored beside it
    sent = app_for(cluster).send_task(TABLE_TASK_NAME, kwargs=kwargs, serializer="msgpack")
    sent.get(timeout=60, propagate=False)
    assert sent.state == "FAILURE"
    assert "its values are no longer in Redis" in str(sent.result)
    assert "run the table again: it resumes where it stopped" in str(sent.result)


def test_a_series_past_the_time_limit_fails_alone_and_the_rest_are_written(
        tmp_path: Path) -> None:
    """A chunk the time limit stopped is sent again one series a message: the series at fault
    (40,000 closes: seconds of ETS) is a failure row, its rows NaN (or, with a fallback model,
    the fallback's forecast), and the 199 others are written (before, the chunk failed whole,
    again on every rerun, and the table never finished)."""
    long = random_walks(1, 40_000, seed=4, start="1950-01-01").assign(unique_id="s-long")
    frame = pd.concat([long, random_walks(199, 120, seed=3)], ignore_index=True)
    table, out = write_parquet(frame, tmp_path / "in.parquet"), tmp_path / "out.parquet"
    limits = {"CRYPTO_ML_SOFT_TIME_LIMIT": "1", "CRYPTO_ML_HARD_TIME_LIMIT": "30"}
    args = ["send-tasks", "--input", str(table), "--output", str(out), "--model", "ets",
            "--horizon", "3", "--max-points", "all", "--chunk-series", "200"]
    with LocalCluster(workers=1, env={**os.environ, **limits}) as cluster:
        done = run_cli(*args, "--broker", cluster.broker_url, timeout=300)
        got, failures = pd.read_parquet(out), pd.read_parquet(tmp_path / "out.failures.parquet")
        # with a fallback model, the series past the limit gets its forecast instead: exit 0
        filled = run_cli(*args, "--broker", cluster.broker_url, "--overwrite",
                         "--fallback-model", "naive", timeout=300)
    assert done.returncode == 1, done.stderr  # one forecast failed
    assert "1 chunk(s) failed as a whole (TaskTimedOut" in done.stderr
    assert set(got["unique_id"]) == set(frame["unique_id"]) and len(got) == 200 * 3
    assert got[got["unique_id"] == "s-long"]["ets"].isna().all()
    assert got[got["unique_id"] != "s-long"]["ets"].notna().all()
    assert failures[["unique_id", "model"]].values.tolist() == [["s-long", "ets"]]
    assert failures["error"][0].startswith("TaskTimedOut")
    assert "summary: 200 series" in done.stderr
    assert filled.returncode == 0, filled.stderr
    again = pd.read_parquet(out)
    assert again.query("unique_id == 's-long'")["ets"].tolist() == [long["y"].iloc[-1]] * 3
    assert again.query("unique_id != 's-long'").equals(got.query("unique_id != 's-long'"))
    reasons = pd.read_parquet(tmp_path / "out.failures.parquet")["error"].tolist()
    assert len(reasons) == 1 and reasons[0].startswith("filled by fallback naive: TaskTimedOut")


def _chunk_tasks(cluster) -> set[str]:
    """The ids of every table chunk the cluster's workers have finished so far."""
    return set(re.findall(r"task (\S+) done: table chunk", worker_logs(cluster)))


def test_a_bad_table_exits_2_in_one_line_before_any_cluster(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    random_walks(3, 5).rename(columns={"y": "close"}).to_csv(bad, index=False)
    done = run_cli("send-tasks", "--input", str(bad), "--output", str(tmp_path / "o.parquet"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"crypto-ml: error: --input {bad}: no column 'y' (it has unique_id, ds, close); name "
        "yours with --id-col, --time-col and --value-col"]
    assert not (tmp_path / "o.parquet").exists()


def test_the_same_output_for_another_horizon_exits_2_naming_it(cluster, tmp_path: Path) -> None:
    table = write_parquet(random_walks(20, 30), tmp_path / "in.parquet")
    args = ["send-tasks", "--input", str(table), "--output", str(tmp_path / "o.parquet"),
            "--model", "naive", "--broker", cluster.broker_url]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0 and "already holds this run" in again.stderr
    other = run_cli(*args, "--horizon", "5")
    assert other.returncode == 2 and "--horizon was 10, now 5" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    # with no broker the run would start its own cluster: the refusal comes before it
    embedded = [a for a in args if a not in ("--broker", cluster.broker_url)]
    for refused in (run_cli(*embedded, "--horizon", "5", "--model", "naive"),
                    run_cli(*embedded, "--model", "naive,linear")):
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("crypto-ml: error: --output ") and \
            len(refused.stderr.strip().splitlines()) == 1, refused.stderr  # no cluster's notice
    assert "--model was naive (200 closes), now naive (200 closes),linear (200 closes)" in \
        refused.stderr
    finished = run_cli(*embedded)  # nothing to compute: no cluster either
    assert finished.returncode == 0 and "embedded" not in finished.stderr, finished.stderr
    gone = [a if a != cluster.broker_url else f"redis://127.0.0.1:{free_port()}/0" for a in args]
    unreachable = run_cli(*gone, "--horizon", "5", "--overwrite")
    assert unreachable.returncode == 2 and "cannot reach the broker" in unreachable.stderr
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 20 * 10  # it deleted OUT first
    assert run_cli(*args, "--horizon", "5", "--overwrite").returncode == 0
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 20 * 5


def test_crypto_ml_forecast_takes_a_frame_as_statsforecast_does(
        cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CRYPTO_ML_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CRYPTO_ML_BROKER_URL", cluster.broker_url)
    frame = random_walks(30, 50)
    got = crypto_ml.forecast(frame, model="naive", horizon=4, levels=(90,))
    assert list(got.columns) == ["unique_id", "ds", "naive", "naive-lo-90", "naive-hi-90"]
    assert len(got) == 30 * 4 and got.attrs["failures"] == []
    last = frame.groupby("unique_id")["y"].last()
    assert (got.groupby("unique_id")["naive"].first() == last).all()
    assert pd.api.types.is_datetime64_any_dtype(got["ds"])
    numbered = frame.assign(unique_id=frame["unique_id"].str[1:].astype(int))
    got = crypto_ml.forecast(numbered, model="naive", horizon=np.int64(2), levels=())
    assert got["unique_id"].dtype == numbered["unique_id"].dtype  # merges with the input
    assert got.merge(numbered.groupby("unique_id").size().rename("n").reset_index()).shape[0] == 60
    # columns of the caller's own names come back under them, as statsforecast answers
    renamed = numbered.rename(columns={"unique_id": "symbol", "ds": "t", "y": "close"})
    got = crypto_ml.forecast(renamed, model="naive", horizon=1, levels=(), id_col="symbol",
                             time_col="t", target_col="close")
    assert list(got.columns) == ["symbol", "t", "naive"]
    assert got.merge(renamed, on=["symbol"]).shape[0] == len(renamed)
    # a Parquet path of dates and categorical ids: datetimes and numbers back, as pandas reads
    table = tmp_path / "t.parquet"
    numbered.assign(ds=numbered["ds"].dt.date, unique_id=numbered["unique_id"].astype("category")
                    ).to_parquet(table)
    got = crypto_ml.forecast(table, model="naive", horizon=2, levels=())
    assert pd.api.types.is_datetime64_any_dtype(got["ds"]) and got["unique_id"].dtype == np.int64
    # statsforecast's fallback_model: the series linear cannot fit get naive's forecast
    short = pd.DataFrame({"unique_id": ["short"], "ds": [pd.Timestamp("2017-09-01")], "y": [2.0]})
    got = crypto_ml.forecast(pd.concat([frame, short]), model="linear", horizon=2, levels=(),
                             fallback_model="naive")
    assert got["linear"].notna().all() and got.loc[got["unique_id"] == "short", "linear"].eq(2.0).all()
    assert [(f["unique_id"], f["model"]) for f in got.attrs["failures"]] == [("short", "linear")]
    assert got.attrs["failures"][0]["error"].startswith("filled by fallback naive:")


def test_backtest_reads_a_long_table_too(cluster, price_data: Path, tmp_path: Path) -> None:
    frame = coin_windows(price_data, 6, 120)
    table = write_parquet(frame, tmp_path / "in.parquet")
    done = run_cli("backtest", "--input", str(table), "--model", "naive,linear", "--origins",
                   "3", "--broker", cluster.broker_url, "--out", str(tmp_path / "bt"))
    assert done.returncode == 0, done.stderr
    ids = frame["unique_id"].drop_duplicates().tolist()
    assert all(uid in done.stdout for uid in ids)
    assert "aggregate over 6 coin(s)" in done.stdout
    until = str(frame["ds"].max().date() - pd.Timedelta(days=30))
    cut = run_cli("backtest", "--input", str(table), "--model", "naive", "--origins", "3",
                  "--until", until, "--broker", cluster.broker_url, "--out", str(tmp_path / "c"))
    assert cut.returncode == 0, cut.stderr
    windows = json.loads((tmp_path / "c" / "backtest.json").read_text())["windows"]
    assert max(d for dates in windows.values() for d in dates) <= until  # none after --until


def test_a_chunks_values_outlive_its_message(cluster) -> None:
    """Kept for the message's own expiry, a run at the hard limit and a redelivery: a chunk
    that waits in the queue still finds its values."""
    app = app_for(cluster)
    client = cluster.client()
    store_payload(app, "t-outlive", b"\0" * 16, payload_seconds(app, 3600))
    try:
        bound = 3600 + int(app.conf.task_time_limit or 0) + redelivery_bound(app)
        assert bound - 5 <= client.ttl(keys.PAYLOAD + "t-outlive") <= bound
    finally:  # the cluster is the module's: leave nothing for the other tests
        client.delete(keys.PAYLOAD + "t-outlive")


def test_values_a_restarted_redis_lost_are_stored_again(tmp_path: Path) -> None:
    """Chunks queued while their stored values vanish (a result backend that restarted without
    its data): each worker fails its chunk saying so, and the run stores the values again and
    resends it once; every series arrives, exit 0."""
    table = write_parquet(random_walks(300, 20), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    with LocalCluster(workers=1) as cluster:
        app, admin = app_for(cluster), cluster.client()
        stop_consuming(app, cluster.worker_names)
        run = _start(["send-tasks", "--input", str(table), "--output", str(out), "--model",
                      "naive", "--horizon", "3", "--chunk-series", "100", "--in-flight", "3",
                      "--broker", cluster.url_for("manager")])
        try:
            wait_until(lambda: len(list(admin.scan_iter(keys.pattern(keys.PAYLOAD)))) == 3
                       or run.poll() is not None, 60, "three chunks queued")
            admin.delete(*admin.scan_iter(keys.pattern(keys.PAYLOAD)))
            assert app.control.add_consumer("cpu", destination=cluster.worker_names, reply=True)
            _, stderr = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 0, stderr
    assert stderr.count("again and resent it: its worker found them gone from Redis") == 3
    got = pd.read_parquet(out)
    assert len(got) == 300 * 3 and got["unique_id"].nunique() == 300


def test_a_table_run_feeds_workers_that_join_it_two_messages_each(
        price_data: Path, tmp_path: Path) -> None:
    # the manager's own machine says nothing of a remote cluster's size (CRYPTO_ML_WORKERS=1
    # here): the live workers' heartbeats do, read again as the run goes
    table = write_parquet(coin_windows(price_data, 6000, 60), tmp_path / "in.parquet")
    with LocalCluster(workers=1) as cluster:
        run = subprocess.Popen(
            [sys.executable, "-m", "crypto_ml", "send-tasks", "--input", str(table), "--output",
             str(tmp_path / "out.parquet"), "--model", "theta", "--chunk-series", "10",
             "--broker", cluster.url_for("manager")], cwd=ROOT,
            env=cli_env(env={"CRYPTO_ML_WORKERS": "1"}), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        seen: list[int] = []

        def in_flight() -> int:  # queued, or taken by a worker
            with cluster.client() as client:
                seen.append(client.llen("cpu") + client.hlen("unacked"))
            return seen[-1]

        def served() -> list[int]:  # tasks done by each worker that joined
            return [len(re.findall(r"task \S+ done", (cluster.workdir / f"worker{i}.log")
                                   .read_text(errors="replace"))) for i in (2, 3, 4)]

        try:
            wait_until(lambda: in_flight() > 0, 120, "the run's first message")
            alone = max(in_flight() for _ in range(50))
            for _ in range(3):
                cluster.add_worker()
            wait_until(lambda: in_flight() > 4 and all(served()), 120, "more messages in flight "
                       "for 4 workers, each that joined serving",
                       alive=lambda: run.poll() is not None and "the run ended")
            run.send_signal(signal.SIGINT)  # what the rest of the run would show is shown
            _, err = run.communicate(timeout=120)
        finally:
            run.kill()
    assert run.returncode == 130, err  # stopped as asked, resumable
    assert alone <= 4 < max(seen) <= 8, (alone, max(seen))
