"""End to end: the CLI, a real Redis server, real celery worker processes, real training."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import ROOT, run_cli

from crypto_ml.core.errors import CoinNotFound, ConfigError, CryptoMLError
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.manager import CryptoManager, checked_call
from crypto_ml.dispatch.report import RunReport
from crypto_ml.models import get_model
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import ForecastRequest

pytestmark = pytest.mark.integration

LINEAR_COINS = ["bitcoin", "ethereum", "ripple", "litecoin", "dash", "monero", "nem", "neo",
                "iota", "zcash", "stratis", "waves", "neblio", "siacoin", "nexus", "dogecoin",
                "bitcoin_cash", "i-o_coin", "ethereum_classic", "lisk", "steem", "decred",
                "factom", "golos", "komodo", "namecoin", "peercoin", "reddcoin", "verge", "vertcoin",
                "viacoin", "zcoin"]  # 32 coins: the manager sends them in batches of 8


def forecasts_printed(stdout: str) -> dict[str, list[float]]:
    lines = {}
    for line in stdout.splitlines():
        coin, _model, array = line.split(" ", 2)  # coin model [[f1 f2 ...]]
        lines[coin] = [float(x) for x in array.strip("[] ").split()]
    return lines


def _trend(prices: np.ndarray, h: int = 10) -> np.ndarray:
    t = np.arange(len(prices))
    return np.polyval(np.polyfit(t, prices, 1), np.arange(len(prices), len(prices) + h))


def test_linear_forecasts_equal_an_in_process_fit(cluster: Any, price_data: Path,
                                                  tmp_path: Path) -> None:
    """By default each coin is fitted on its newest 200 closes, with 80% and 95% intervals."""
    out = tmp_path / "linear.json"
    run = run_cli("send-tasks", "--model", "linear", "--coins", ",".join(LINEAR_COINS),
                  "--broker", cluster.broker_url, "--output", str(out), data_dir=price_data)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["failed"] == {} and set(report["results"]) == set(LINEAR_COINS)
    printed = forecasts_printed(run.stdout)
    loader = CryptoLoader(price_data)
    for coin in LINEAR_COINS:
        prices = loader.get_prices(coin)
        prices = prices[~np.isnan(prices)][-200:]
        expected = _trend(prices)
        result = report["results"][coin]["linear"]
        np.testing.assert_allclose(result["forecast"], expected, rtol=1e-9)
        np.testing.assert_allclose(printed[coin], expected, rtol=1e-6, atol=1e-8)  # 8 decimals
        assert result["n_points"] == len(prices) and result["horizon"] == 10
        assert result["last_date"] == loader.get_df(coin)["Date"].iloc[-1].date().isoformat()
        assert result["worker"] in cluster.worker_names
        assert set(result["intervals"]) == {"80", "95"}
        for band in result["intervals"].values():
            assert (np.array(band["lower"]) <= expected + 1e-9).all()
            assert (np.array(band["upper"]) >= expected - 1e-9).all()

    whole = tmp_path / "all.json"
    run = run_cli("send-tasks", "--model", "linear", "--coins", "bitcoin", "--max-points", "all",
                  "--levels", "90", "--broker", cluster.broker_url, "--output", str(whole),
                  data_dir=price_data)
    assert run.returncode == 0, run.stderr
    result = json.loads(whole.read_text())["results"]["bitcoin"]["linear"]
    prices = loader.get_prices("bitcoin")
    prices = prices[~np.isnan(prices)]
    assert result["n_points"] == len(prices) > 200 and set(result["intervals"]) == {"90"}
    np.testing.assert_allclose(result["forecast"], _trend(prices), rtol=1e-9)


def test_deep_models_and_bad_coins(cluster: Any, price_data: Path, tmp_path: Path) -> None:
    """LSTM and GRU train on both workers; a too-short and an unreadable coin fail alone (exit 1)."""
    out = tmp_path / "deep.json"
    coins = ["bitcoin", "ethereum", "neblio", "100_list"]  # 100 List.csv: a ranking, no prices
    run = run_cli("send-tasks", "--model", "lstm,gru", "--coins", ",".join(coins), "--epochs",
                  "1", "--horizon", "5", "--max-points", "400", "--broker", cluster.broker_url,
                  "--output", str(out), data_dir=price_data)
    assert run.returncode == 1, run.stderr
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"bitcoin", "ethereum"}
    assert set(report["failed"]) == {"neblio", "100_list"}
    assert "SeriesTooShort" in report["failed"]["neblio"]["lstm"]
    assert "11" in report["failed"]["neblio"]["gru"] and "51" in report["failed"]["neblio"]["gru"]
    assert "cannot read the price file of coin '100_list': 100 List.csv: no Date or Close " \
        "column" in report["failed"]["100_list"]["lstm"]  # it read 'unknown coin'
    assert "neblio" in run.stderr and "100_list" in run.stderr and "Traceback" not in run.stderr
    results = [r for by_model in report["results"].values() for r in by_model.values()]
    assert {r["worker"] for r in results} == set(cluster.worker_names)  # both workers trained
    loader = CryptoLoader(price_data)
    for r in results:
        assert len(r["forecast"]) == 5 and r["device"].startswith(("CPU", "GPU"))
        local = get_model(r["model"], epochs=1).fit(loader.get_prices(r["coin"])[-400:])
        # same seed and data; the worker uses fewer math threads, so allow float-order noise
        np.testing.assert_allclose(r["forecast"], local.forecast(5), rtol=1e-3)
    logs = "".join(p.read_text() for p in Path(cluster.workdir).glob("worker*.log"))
    assert "trains on CPU" in logs or "trains on GPU" in logs


def test_tensorflow_lives_in_pool_children_only(cluster: Any) -> None:
    """After deep training, the forking worker parents still hold no TensorFlow library.

    The test trains on every worker itself, so it checks something when run alone too."""
    settings = Settings(batch_size=1).with_broker(cluster.broker_url)
    manager = CryptoManager(app=create_app(settings), settings=settings)
    prices = [100.0 + i + (i % 7) for i in range(120)]
    requests = [ForecastRequest(f"walk{i}", "lstm", prices, 2, None, {"epochs": 1})
                for i in range(4 * len(cluster.workers))]
    report = manager.dispatch(requests, timeout=300)
    assert not report.failed
    trained = {r["worker"] for by_model in report.results.values() for r in by_model.values()}
    assert trained == set(cluster.worker_names)  # every worker trained a network
    for proc in cluster.workers:
        parent = psutil.Process(proc.pid)
        assert "tensorflow" not in Path(f"/proc/{parent.pid}/maps").read_text()
        children = parent.children(recursive=True)
        assert any("tensorflow" in Path(f"/proc/{c.pid}/maps").read_text() for c in children)


def test_unreachable_broker_exits_2_within_10_seconds(price_data: Path) -> None:
    started = time.monotonic()
    run = run_cli("send-tasks", "--coins", "bitcoin", "--broker",
                  "redis://:hunter2@127.0.0.1:9/0", data_dir=price_data, timeout=30)
    assert run.returncode == 2
    assert time.monotonic() - started < 10
    assert run.stderr.strip().splitlines()[-1].startswith("crypto-ml: error: cannot reach")
    assert "hunter2" not in run.stderr and "Traceback" not in run.stderr


def test_missing_data_stops_at_once_with_how_to_get_data(tmp_path: Path) -> None:
    started = time.monotonic()
    run = run_cli("send-tasks", data_dir=tmp_path / "none", timeout=30)
    assert run.returncode == 2 and time.monotonic() - started < 5
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Top 100 Cryptocurrency Historical Data" in run.stderr


def test_unknown_model_is_a_configuration_error(price_data: Path) -> None:
    run = run_cli("send-tasks", "--model", "linear,prophet", data_dir=price_data, timeout=30)
    assert run.returncode == 2 and "unknown model 'prophet'" in run.stderr


def _cluster_processes(manager_pid: int) -> list[psutil.Process]:
    """Redis, workers and pool children of the cluster this manager started (named by its pid)."""
    tag = f"-{manager_pid}-"  # in worker names, and in the folder redis-server runs in
    return [p for p in psutil.process_iter(["cmdline", "cwd"])
            if tag in " ".join(p.info["cmdline"] or []) or tag in (p.info["cwd"] or "")]


def _embedded(args: list[str], price_data: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    env.update(CRYPTO_ML_DATA_DIR=str(price_data), CRYPTO_ML_WORKERS="2")
    return subprocess.Popen([sys.executable, "-m", "crypto_ml.manager", "send-tasks", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_embedded_default_runs_and_leaves_nothing_behind(
        price_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the run's temporary folder, and its workers'
    proc = _embedded(["--coins", "bitcoin,ethereum,dash"], price_data)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "running embedded" in stderr and "CRYPTO_ML_BROKER_URL" in stderr
    assert set(forecasts_printed(stdout)) == {"bitcoin", "ethereum", "dash"}
    assert not _cluster_processes(proc.pid)
    assert list(tmp_path.iterdir()) == []  # no cluster folder, no worker pool's pymp-* folder


def test_ctrl_c_stops_the_embedded_cluster(price_data: Path) -> None:
    proc = _embedded(["--model", "lstm", "--epochs", "50"], price_data)
    assert proc.stderr is not None
    lines = iter(proc.stderr.readline, "")
    assert any("running embedded" in line for line in lines)  # the cluster is starting
    try:  # redis-server and both workers are up (wait_until fails the test at its deadline)
        wait_until(lambda: len(_cluster_processes(proc.pid)) >= 3, 120,
                   "the embedded cluster's processes appearing")
    except BaseException:
        proc.kill()
        raise
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # no-op once it has exited; ends it if the assertion below will fail
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not _cluster_processes(proc.pid)


def _workdirs(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"crypto-ml-{pid}-*"))


def test_a_killed_runs_cluster_dies_with_it_and_the_next_run_deletes_its_folder(
        price_data: Path) -> None:
    proc = _embedded(["--model", "lstm", "--epochs", "50"], price_data)
    try:
        wait_until(lambda: len(_cluster_processes(proc.pid)) >= 3, 120,
                   "the embedded cluster's processes appearing")
    finally:
        proc.kill()  # SIGKILL: no handler runs, nothing is stopped or deleted by the run
        proc.communicate(timeout=30)
    wait_until(lambda: not _cluster_processes(proc.pid), 60, "the cluster dying with its run")
    assert _workdirs(proc.pid)  # its Redis files and logs, left behind
    after = _embedded(["--coins", "bitcoin"], price_data)
    _, stderr = after.communicate(timeout=300)
    assert after.returncode == 0, stderr
    assert not _workdirs(proc.pid) and not _workdirs(after.pid)


def test_celery_finds_the_app_from_any_folder(tmp_path: Path) -> None:
    env = {**os.environ, "CRYPTO_ML_BROKER_URL": "redis://:topsecret@127.0.0.1:6399/0"}
    run = subprocess.run([sys.executable, "-m", "celery", "-A", "crypto_ml", "report"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "crypto_ml.forecast" in run.stdout or "broker_url" in run.stdout
    assert "topsecret" not in run.stdout


def test_python_api_returns_arrays_and_prints_one_line_per_coin(cluster: Any,
                                                                 price_data: Path) -> None:
    import io

    out, err = io.StringIO(), io.StringIO()
    settings = Settings(data_dir=price_data).with_broker(cluster.broker_url)
    manager = CryptoManager(settings=settings, out=out, err=err)
    # numpy's integers as Python's: np.int64 failed in kombu's msgpack encoder
    forecasts = manager.send_tasks(model="naive", coins=["bitcoin", "dash"], horizon=np.int64(3))
    assert set(forecasts) == {"bitcoin", "dash"}
    np.testing.assert_array_equal(forecasts["bitcoin"], [3630.7] * 3)
    assert sorted(line.split()[0] for line in out.getvalue().splitlines()) == ["bitcoin", "dash"]
    assert "bitcoin [[3630.7 3630.7 3630.7]]" in out.getvalue()
    assert manager.last_report is not None and manager.last_report.ok
    # names as the files give them: results keyed by the coin's id, each coin once
    again = manager.send_tasks(model="naive", coins=["Bitcoin", "bitcoin", "Bitcoin Cash"],
                               horizon=3)
    assert sorted(again) == ["bitcoin", "bitcoin_cash"]
    # a typo is refused before any work, as on the command line (it returned {} and a line)
    with pytest.raises(CoinNotFound, match="unknown coin 'bitcon'; did you mean bitcoin"):
        manager.send_tasks(model="naive", coins=["dash", "bitcon"])


@pytest.mark.parametrize(("coins", "horizon", "timeout", "says"), [
    ([], 10, 60.0, "coins is empty; pass None for every coin"),
    (5, 10, 60.0, "coins must be a list of names or ids, a comma list, or None for every "
     "coin, got int 5"),
    (["bitcoin"], 0, 60.0, "horizon must be a positive integer, got 0"),
    (["bitcoin"], "3", 60.0, "horizon must be a positive integer, got '3'"),
    (["bitcoin"], 10, -1.0, "timeout must be a number of seconds above 0, at most 2592000 "
     "(30 days), or None; got -1.0"),
    (["bitcoin"], 10, float("nan"), "timeout must be a number of seconds above 0"),
    # a task's expiry past Python's dates failed deep in Celery, with a traceback
    (["bitcoin"], 10, 1e308, "timeout must be a number of seconds above 0, at most 2592000"),
])
def test_a_python_callers_bad_arguments_are_refused_before_anything_starts(
        coins: list[str], horizon: object, timeout: float, says: str) -> None:
    manager = CryptoManager(app=create_app(Settings(broker_url="redis://127.0.0.1:1/0")))
    with pytest.raises(CryptoMLError, match=re.escape(says)):  # nothing listens there
        manager.send_tasks("naive", coins, horizon, timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "says"), [
    ({"horizon": 10_000}, "horizon must be at most 365 (CRYPTO_ML_MAX_HORIZON), got 10000"),
    ({"max_points": -1}, "max_points must be a whole number of closes (0: all), got -1"),
    ({"epochs": 3}, "epochs: naive does not take it"),
    ({"model": "lstm", "epochs": 10**6}, "model 'lstm': epochs must be"),
])
def test_a_python_callers_options_out_of_range_are_refused_before_anything_starts(
        options: dict[str, object], says: str) -> None:
    manager = CryptoManager(app=create_app(Settings(broker_url="redis://127.0.0.1:1/0")))
    with pytest.raises(CryptoMLError, match=re.escape(says)):  # nothing listens there
        manager.send_tasks(**{"model": "naive", "coins": ["bitcoin"], **options})  # type: ignore[arg-type]


def test_a_window_above_the_workers_cap_is_failed_before_it_is_sent(price_data: Path) -> None:
    """CRYPTO_ML_MAX_SERIES below a run's window failed every task on the workers, each saying
    only "200 points is above the cap of 10" (an outside probe). Only the closes a coin has
    count: a 200-close window of a 50-close coin sends 50."""
    loader = CryptoLoader(price_data)
    settings = Settings(broker_url="redis://127.0.0.1:1/0", max_series=150)  # nothing there
    manager = CryptoManager(loader=loader, app=create_app(settings), settings=settings)
    lengths = {c: len(loader.get_closes(c)[1]) for c in loader.get_crypto_names()}
    assert min(lengths.values()) <= 150 < max(lengths.values())  # both kinds in the data
    for window, cap in ((None, 200), (0, None), (120, 120)):  # default, every close, given
        report = RunReport()
        requests = manager.build_requests(["naive"], None, 5, window, {}, report)
        sent = {c for c, n in lengths.items() if min(n, cap or n) <= 150}
        assert sorted(r.coin for r in requests) == sorted(sent)
        assert sorted(report.failed) == sorted(set(lengths) - sent)
        assert all("above CRYPTO_ML_MAX_SERIES=150 (here, and on workers that share this "
                   "setting)" in reason["naive"] for reason in report.failed.values())


def test_a_python_callers_coins_string_is_a_comma_list_not_its_letters() -> None:
    assert checked_call("bitcoin, ethereum", None) == ["bitcoin", "ethereum"]
    assert checked_call(("bitcoin",), 60.0) == ["bitcoin"]
    assert checked_call(None, None) is None
    assert checked_call(["bitcoin", "dash", "bitcoin"], None) == ["bitcoin", "dash"]
    with pytest.raises(ConfigError, match="coins must be names or ids"):
        checked_call(["bitcoin", 5], None)  # type: ignore[list-item]
