"""Manager experience without a cluster: settings, task labels, progress, summary, logs, plot."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import shown_lines

from crypto_ml.cli.table import TableProgress
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.logs import JsonFormatter, LogWriter, TextFormatter
from crypto_ml.core.progress import Progress
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.report import RunReport
from crypto_ml.dispatch.summary import summarize, summary_lines
from crypto_ml.ops.flower import flower_env, send_options
from crypto_ml.worker.requests import ForecastRequest, run_forecast

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _result(coin: str, model: str, seconds: float, worker: str) -> dict[str, object]:
    return {"coin": coin, "model": model, "horizon": 3, "forecast": [1.0, 2.0, 3.0],
            "last_date": "2017-09-22", "n_points": 50, "fit_seconds": seconds,
            "worker": worker, "device": "CPU"}


# settings and Flower -------------------------------------------------------------------------

def test_flower_settings_come_from_the_environment() -> None:
    env = {"CRYPTO_ML_FLOWER_PORT": "6555", "CRYPTO_ML_FLOWER_ADDRESS": "0.0.0.0",
           "CRYPTO_ML_FLOWER_BASIC_AUTH": "ops:s3cret", "CRYPTO_ML_LOG_FORMAT": "JSON"}
    settings = Settings.from_env(env)
    assert (settings.flower_port, settings.flower_address) == (6555, "0.0.0.0")
    assert settings.flower_basic_auth == "ops:s3cret" and settings.log_format == "json"
    assert "s3cret" not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.flower_port, defaults.flower_address) == (5555, "127.0.0.1")
    assert defaults.flower_basic_auth is None and defaults.log_format == "text"


@pytest.mark.parametrize("env", [{"CRYPTO_ML_FLOWER_BASIC_AUTH": "nopassword"},
                                 {"CRYPTO_ML_FLOWER_BASIC_AUTH": "ops:pw,:pw2"},
                                 {"CRYPTO_ML_LOG_FORMAT": "xml"}])
def test_bad_monitoring_settings_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_flower_is_not_exposed_without_auth() -> None:
    with pytest.raises(ConfigError, match="CRYPTO_ML_FLOWER_BASIC_AUTH"):
        flower_env(Settings(flower_address="0.0.0.0"), {})
    exposed = flower_env(Settings(flower_address="0.0.0.0", flower_basic_auth="ops:pw",
                                  broker_url="redis://b:6379/0"), {"FLOWER_PORT": "1"})
    assert exposed["FLOWER_BASIC_AUTH"] == "ops:pw"
    assert exposed["CRYPTO_ML_BROKER_URL"] == "redis://b:6379/0"
    assert "FLOWER_UNAUTHENTICATED_API" not in exposed and "FLOWER_PORT" not in exposed
    local = flower_env(Settings(), {})
    assert local["FLOWER_UNAUTHENTICATED_API"] == "true" and "FLOWER_BASIC_AUTH" not in local


def test_task_labels_show_coin_model_and_sizes_not_prices() -> None:
    request = ForecastRequest("bitcoin", "lstm", [1000.0 + i for i in range(5000)], 10,
                              "2017-09-22", {"epochs": 2})
    options = send_options(request.as_kwargs())
    assert options["argsrepr"] == "()"
    shown = options["kwargsrepr"]
    assert len(shown) < 200 and "1000.0" not in shown
    for part in ("'coin': 'bitcoin'", "'model': 'lstm'", "'horizon': 10", "'n_points': 5000",
                 "'epochs': 2"):
        assert part in shown


def test_batch_labels_name_their_forecasts_briefly() -> None:
    items = [ForecastRequest(f"coin{i}", "linear", [1.0] * 3000, 7).as_kwargs() for i in range(20)]
    shown = send_options({"items": items})["kwargsrepr"]
    assert len(shown) < 250 and "1.0" not in shown
    assert "'batch': 20" in shown and "coin0/linear, coin1/linear" in shown
    assert "coin8/" not in shown and "+12 more" in shown and "'horizon': 7" in shown


# progress ------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_on_a_terminal_counts_and_estimates() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, tty=True, clock=clock)
    for i in range(4):
        progress.on_sent(None, f"t{i}", f"coin{i}", "linear")
    clock.now += 2.0
    progress.on_done("t0", "coin0", "linear", _result("coin0", "linear", 0.1, "w1"), None)
    progress.on_done("t1", "coin1", "linear", None, "SeriesTooShort: too short")
    progress.on_wait()
    [bar] = shown_lines(stream.getvalue())
    assert bar.startswith("[") and "2/4 finished: 1 done, 1 failed" in bar
    assert "ETA 0:02" in bar  # 2 finished in 2 s, 2 to go
    progress.on_done("t2", "coin2", "linear", _result("coin2", "linear", 0.1, "w1"), None)
    assert shown_lines(stream.getvalue()) == [""]  # cleared before the caller prints
    progress.close()


def test_progress_counts_each_forecast_of_a_batch_message() -> None:
    progress = Progress(io.StringIO(), tty=False, clock=Clock())
    for coin in ("a", "b", "c"):
        progress.on_sent(None, "batch1", coin, "linear")
    progress.on_sent(None, "single", "d", "lstm")
    progress.on_done("batch1", "a", "linear", _result("a", "linear", 0.1, "w"), None)
    progress.on_done("batch1", "b", "linear", None, "SeriesTooShort: too short")
    assert progress.unfinished == {"batch1": 1, "single": 1}
    assert progress.status().startswith("2/4 finished: 1 done, 1 failed, 0 running, 2 queued")


def test_progress_off_a_terminal_logs_a_few_plain_lines(caplog: pytest.LogCaptureFixture) -> None:
    progress = Progress(io.StringIO(), tty=False, clock=Clock())
    caplog.set_level(logging.INFO, logger="crypto_ml.progress")
    for i in range(40):
        progress.on_sent(None, f"t{i}", "c", "linear")
    for i in range(40):
        progress.on_done(f"t{i}", "c", "linear", _result("c", "linear", 0.1, "w"), None)
        progress.on_wait()
    lines = [r.getMessage() for r in caplog.records if r.name == "crypto_ml.progress"]
    assert len(lines) == 4 and lines[-1].startswith("progress: 40/40 finished: 40 done")
    assert "\r" not in "".join(lines) and "[" not in "".join(lines)


def test_progress_counts_a_later_dispatch_as_a_phase_of_its_own(
        caplog: pytest.LogCaptureFixture) -> None:
    """--model best: the backtest's tasks, then the forecasts, on one observer."""
    progress = Progress(io.StringIO(), tty=False, clock=Clock())
    caplog.set_level(logging.INFO, logger="crypto_ml.progress")
    progress.new_phase("backtest")
    for i in range(8):
        progress.on_sent(None, f"b{i}", "c", "naive")
    for i in range(8):
        progress.on_done(f"b{i}", "c", "naive", _result("c", "naive", 0.1, "w"), None)
    progress.new_phase("forecast")
    for i in range(2):
        progress.on_sent(None, f"f{i}", "c", "naive")
    for i in range(2):
        progress.on_done(f"f{i}", "c", "naive", _result("c", "naive", 0.1, "w"), None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[3].startswith("progress: backtest: 8/8 finished: 8 done")
    assert lines[-1].startswith("progress: forecast: 2/2 finished: 2 done") and len(lines) <= 8


def test_a_table_runs_progress_counts_series_and_rates_only_this_runs(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks back with some series failed, a chunk lost, half written by an earlier run."""
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: plain lines
    caplog.set_level(logging.INFO, logger="crypto_ml.progress")
    progress, clock = TableProgress(100, quiet=False), Clock()
    progress.clock, progress.started_at = clock, clock.now
    progress.skip(50, 4)  # written by an earlier run, 4 of them with a failed forecast
    clock.now += 10.0
    progress(25, 5)  # 25 series written, 5 of them with a failed forecast
    progress(0, 25)  # a chunk that did not come back
    lines = [r.getMessage() for r in caplog.records if r.name == "crypto_ml.progress"]
    assert lines == ["progress: 50/100 series: 46 done, 4 failed, 0 series/s, ETA --",
                     "progress: 75/100 series: 66 done, 9 failed, 2 series/s, ETA 0:10",
                     "progress: 100/100 series: 66 done, 34 failed, 5 series/s, ETA 0:00"]


# summary and logs ----------------------------------------------------------------------------

def test_summary_names_failures_fit_times_and_workers() -> None:
    report = RunReport(wall_seconds=4.2)
    report.add_result(_result("bitcoin", "linear", 0.02, "w1@h"))
    report.add_result(_result("bitcoin", "lstm", 3.5, "w2@h"))
    report.add_result(_result("dash", "linear", 0.05, "w1@h"))
    report.add_result(_result("dash", "lstm", 1.5, "w1@h"))
    report.add_failure("neblio", "lstm", "SeriesTooShort: 20 points, lstm needs 31")
    data = summarize(report)
    assert data["coins_ok"] == ["bitcoin", "dash"] and list(data["coins_failed"]) == ["neblio"]
    assert data["models"]["lstm"] == {"fits": 2, "from_store": 0, "total_seconds": 5.0,
                                      "slowest_coin": "bitcoin", "slowest_seconds": 3.5,
                                      "devices": {"CPU": 2}}
    assert data["workers"] == {"w1@h": 3, "w2@h": 1}
    text = "\n".join(summary_lines(data))
    assert text.startswith("summary: 2 coin(s) ok, 1 failed, in 4.2 s (4 forecast(s) arrived, "
                           "1 failed)")
    assert "failed: neblio lstm: SeriesTooShort: 20 points" in text
    assert "lstm: 2 fit(s), 5.000 s in all, slowest bitcoin 3.500 s, on CPU" in text
    assert "workers: w1@h (3), w2@h (1)" in text


def test_the_summary_counts_forecasts_from_the_model_store_apart_from_fits() -> None:
    report = RunReport(wall_seconds=1.0)
    report.add_result({**_result("bitcoin", "lstm", 3.5, "w1@h"), "from_store": False})
    report.add_result({**_result("dash", "lstm", 0.01, "w1@h"), "from_store": True})
    data = summarize(report)
    assert (data["models"]["lstm"]["fits"], data["models"]["lstm"]["from_store"]) == (1, 1)
    text = "\n".join(summary_lines(data))
    assert "(2 forecast(s) arrived, 0 failed)" in text
    assert "lstm: 1 fit(s) and 1 from the model store, 3.510 s in all, slowest bitcoin 3.500 s, " \
           "on CPU\n" in f"{text}\n"  # both on CPU: no count beside it


def test_json_log_lines_carry_the_task_fields() -> None:
    record = logging.LogRecord("crypto_ml.manager", logging.INFO, __file__, 1,
                               "task %s ok", ("abc",), None)
    record.fields = {"task_id": "abc", "coin": "bitcoin", "model": "linear",
                     "worker": "w1@h", "seconds": 0.25}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "task abc ok" and entry["level"] == "INFO"
    assert {k: entry[k] for k in ("task_id", "coin", "model", "worker", "seconds")} == \
        record.fields
    assert entry["time"].endswith("+00:00")


def test_a_commands_warning_reads_as_its_other_lines_and_minus_v_adds_time() -> None:
    warning = logging.LogRecord("crypto_ml.data.loader", logging.WARNING, __file__, 1,
                                "bad.csv: dropped %d unparseable rows", (1,), None)
    assert TextFormatter(plain=True).format(warning) == "warning: bad.csv: dropped 1 unparseable rows"
    detailed = TextFormatter().format(warning)  # -v: time, level and logger, as task lines
    assert detailed.endswith(" WARNING crypto_ml.data.loader: bad.csv: dropped 1 unparseable rows")
    notice = logging.LogRecord("crypto_ml.console", logging.INFO, __file__, 1, "hello", (), None)
    assert TextFormatter().format(notice) == TextFormatter(plain=True).format(notice) == "hello"


def test_plain_notices_become_log_records_in_json_mode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.notices")
    writer = LogWriter(logging.getLogger("test.notices"))
    print("failed: x linear: boom", file=writer)
    writer.write("partial ")
    writer.write("line\n")
    assert [r.getMessage() for r in caplog.records] == ["failed: x linear: boom", "partial line"]


# plot ----------------------------------------------------------------------------------------

@pytest.mark.integration  # runs a command in a subprocess
def test_plot_draws_one_readable_panel_per_coin_and_one_legend(price_data: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from crypto_ml.ops.plot import plot_forecasts

    loader = CryptoLoader(price_data)
    coins = ["bitcoin", "ethereum", "litecoin", "dash"]
    report = RunReport()
    histories = {}
    for coin in coins:
        frame = loader.get_df(coin)
        histories[coin] = frame
        last = frame["Date"].iloc[-1].date().isoformat()
        for model in ("linear", "naive"):
            request = ForecastRequest(coin, model, frame["Close"].dropna().tolist(), 14, last)
            report.add_result(run_forecast(request, worker="in-process"))
    path = ARTIFACTS / "forecast-plot.png"
    info = plot_forecasts(report.results, histories, path)
    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[:2] == (info.size[1], info.size[0]) and info.size[0] >= 800
    assert list(info.panels) == coins and not info.left_out
    assert info.legends == 1  # one for the figure, none repeated in each panel
    for coin, (left, top, right, bottom) in info.panels.items():
        inner = image[top + 3:bottom - 3, left + 3:right - 3]  # inside the frame
        history = (inner.max(axis=2) < 0.25).any(axis=0).mean()  # columns the black line crosses
        tail = inner[:, int(inner.shape[1] * 0.7):]  # the forecast days
        blue = ((tail[..., 2] > 0.6) & (tail[..., 0] < 0.3)).sum()  # the linear forecast
        assert history > 0.6 and blue > 20, f"panel {coin} misses its history or forecast"
        pale = ((tail[..., 2] - tail[..., 0] > 0.03) & (tail[..., 0] > 0.6)).sum()
        assert pale > 200, f"panel {coin} does not shade the linear forecast's intervals"
    assert not np.allclose(image, image[0, 0])


@pytest.mark.parametrize(("env", "says"), [
    ({"CRYPTO_ML_BROKER_URL": "redis://127.0.0.1:9/0", "CRYPTO_ML_FLOWER_ADDRESS": "0.0.0.0"},
     "refusing to expose Flower on 0.0.0.0 without authentication"),
    ({}, "set CRYPTO_ML_BROKER_URL"),
])
@pytest.mark.integration  # runs a command in a subprocess
def test_flower_launcher_stops_with_one_line_when_unsafe_or_unconfigured(
        env: dict[str, str], says: str) -> None:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    run = subprocess.run([sys.executable, "-m", "crypto_ml", "flower"], env={**clean, **env},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and says in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
