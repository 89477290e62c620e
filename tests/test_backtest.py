"""Backtests: metrics and scores checked against hand computations, model choice, the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import FIXTURES, run_cli

from crypto_ml.backtest.best import choose, load_saved
from crypto_ml.backtest.engine import (
    BacktestConfig,
    BacktestResult,
    nothing_to_backtest,
    origins_for,
    run_backtest,
)
from crypto_ml.backtest.metrics import naive_scale, scores
from crypto_ml.backtest.report import summary, write_json
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.models import get_model
from crypto_ml.worker.app import create_app

DATA = FIXTURES / "backtest"  # Walk.csv: closes 1 2 4 3 5 6 8 7; Stub.csv: 3 closes
SMALL = BacktestConfig(models=("naive", "linear"), horizon=2, origins=2, min_train=4)

# By hand, for Walk at origins 5 and 6 (train on the first 5 / 6 closes, forecast 2):
#   origin 5: train 1 2 4 3 5, actual 6 8, naive scale (1+2+1+2)/4 = 1.5
#   origin 6: train 1 2 4 3 5 6, actual 8 7, naive scale (1+2+1+2+1)/5 = 1.4
#   naive forecasts 5 5 and 6 6: errors 1 3 and 2 1
NAIVE_MAE = (1 + 3 + 2 + 1) / 4
NAIVE_MASE = (1 / 1.5 + 3 / 1.5 + 2 / 1.4 + 1 / 1.4) / 4
#   linear, origin 5: slope 9/10, intercept 3 - 2 * 0.9 = 1.2 -> 5.7, 6.6: errors 0.3, 1.4
#   linear, origin 6: slope 33/35, intercept 3.5 - 2.5 * 33/35 = 8/7 -> 238/35 = 6.8 and
#   271/35: errors 1.2 and 26/35
LINEAR_MAE = (0.3 + 1.4 + 1.2 + 26 / 35) / 4


def test_metrics_by_hand() -> None:
    actual = np.array([[10.0, 20.0]])
    forecast = np.array([[12.0, 15.0]])
    got = scores(actual, forecast, np.array([2.0]))
    assert got["mae"] == pytest.approx(3.5)
    assert got["rmse"] == pytest.approx(math.sqrt((4 + 25) / 2))
    assert got["mape"] == pytest.approx(100 * (0.2 + 0.25) / 2)
    assert got["mase"] == pytest.approx((2 / 2 + 5 / 2) / 2)
    assert naive_scale([1.0, 2.0, 4.0, 3.0, 5.0]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        naive_scale([1.0])


def test_origins_are_the_newest_that_have_a_full_horizon_of_actuals() -> None:
    assert origins_for(8, SMALL) == [5, 6]
    assert origins_for(100, BacktestConfig(horizon=10, origins=3, stride=5)) == [80, 85, 90]
    assert SMALL.needed() == 4 + 1 + 2


def test_best_takes_the_lowest_mase_and_ties_go_to_the_simpler_model() -> None:
    row = {"mae": 1.0, "rmse": 1.0, "mape": 1.0, "n_forecasts": 1}
    result = BacktestResult(BacktestConfig(models=("naive", "linear", "lstm")), per_coin={
        "tie": {"lstm": {**row, "mase": 0.5}, "linear": {**row, "mase": 0.5},
                "naive": {**row, "mase": 0.7}},
        "deep": {"naive": {**row, "mase": 1.0}, "lstm": {**row, "mase": 0.9}},
    })
    assert result.best() == {"tie": ("linear", 0.5), "deep": ("lstm", 0.9)}
    assert result.common_coins() == ["tie"]  # "deep" lacks linear: not in the aggregate
    assert BacktestResult.from_json(json.loads(json.dumps(result.to_json()))).best() == \
        result.best()


@pytest.mark.parametrize(("option", "value"), [
    ("origins", 0), ("horizon", -2), ("stride", 0), ("stride", -1), ("min_train", 0),
    ("max_points", -1), ("epochs", 0), ("horizon", 2.5), ("origins", True)])
def test_a_config_out_of_range_is_refused_naming_the_option(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"backtest {option} must be an integer"):
        BacktestConfig(**{option: value})  # type: ignore[arg-type]
    assert BacktestConfig(horizon=np.int64(3)).horizon == 3  # numpy's integers are integers


def test_param_epochs_and_seed_reach_the_model() -> None:
    # --param epochs=2 / seed=5 were overwritten by the unset --epochs and the default seed
    assert BacktestConfig(models=("lstm",), options={"epochs": 2}).params("lstm")["epochs"] == 2
    assert BacktestConfig(models=("lstm",), options={"seed": 5}).params("lstm")["seed"] == 5
    assert BacktestConfig(models=("lstm",), epochs=3).params("lstm")["epochs"] == 3
    with pytest.raises(ConfigError, match="both set epochs; give one"):
        BacktestConfig(models=("lstm",), epochs=3, options={"epochs": 2})


@pytest.mark.parametrize("timeout", [0, -5.0, math.nan, math.inf, 1e14, "60"])
def test_a_backtest_timeout_out_of_range_is_refused(timeout: object) -> None:
    with pytest.raises(ConfigError, match="backtest timeout must be a number of seconds above 0"):
        BacktestConfig(timeout=timeout)  # type: ignore[arg-type]
    assert BacktestConfig(timeout=None).timeout is None


def test_a_score_json_cannot_hold_is_written_as_null_and_read_back(tmp_path: Path) -> None:
    row = {"mae": 1.0, "rmse": 1.0, "mape": 1.0, "n_forecasts": 1}
    result = BacktestResult(BacktestConfig(models=("naive", "linear")), per_coin={
        "flat": {"naive": {**row, "mase": math.inf}, "linear": {**row, "mase": math.nan}},
        "walk": {"naive": {**row, "mase": 1.0}, "linear": {**row, "mase": 0.5}},
    }, failed={"neg": {"naive": "ValueError: prices must be positive",
                       "linear": "ValueError: prices must be positive"}})
    write_json(result, tmp_path / "backtest.json")
    text = (tmp_path / "backtest.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert strict["per_coin"]["flat"]["naive"]["mase"] is None
    saved = load_saved(tmp_path / "backtest.json")
    assert {c: m for c, (m, _) in saved.best().items()} == {"flat": "naive", "walk": "linear"}
    lines = io.StringIO()
    assert choose(saved, ["walk", "neg", "gone", "flat"], lines) == {
        "linear": ["walk"], "naive": ["neg", "gone", "flat"]}
    said = lines.getvalue()
    assert "best: walk -> linear (lowest backtest MASE 0.5 of naive, linear)" in said
    assert ("best: flat -> naive (no finite backtest MASE among naive, linear (a history "
            "without day-to-day change has no scale); the simplest of them)") in said
    assert "best: neg -> naive (no candidate scored in the backtest: naive: ValueError" in said
    assert "best: gone -> naive (not backtested: absent from the backtest)" in said


def test_series_ids_with_control_characters_are_quoted_on_the_terminal() -> None:
    # a table's ids may hold anything: a line break split the one-line error, an escape
    # sequence coloured the terminal
    odd = ["evil\nline2", "\x1b[31mRED\x1b[0m"]
    row = {"mae": 1.0, "rmse": 1.0, "mape": 1.0, "mase": 1.0, "n_forecasts": 1}
    result = BacktestResult(BacktestConfig(models=("naive",)),
                            per_coin={odd[0]: {"naive": row}},
                            failed={odd[1]: {"naive": "ModelFitFailed: no"}},
                            skipped={"a\tb": "3 closes"})
    shown = summary(result) + str(nothing_to_backtest(dict.fromkeys(odd, "60 closes")))
    assert "\x1b" not in shown and "\t" not in shown and "evil\n" not in shown
    assert "'evil\\nline2'" in shown and "'\\x1b[31mRED\\x1b[0m'" in shown


def _edited(change: Any) -> dict[str, Any]:
    row = {"mae": 1.0, "rmse": 1.0, "mape": 1.0, "n_forecasts": 1, "mase": 1.0}
    data = BacktestResult(BacktestConfig(models=("naive",)), per_coin={"a": {"naive": row}}
                          ).to_json()
    return change(data) or data


# a hand-edited file was refused with Python's words ("min() arg is an empty sequence",
# "'NoneType' object has no attribute 'items'", "ufunc 'isnan' not supported")
@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d["per_coin"]["a"]["naive"].update(mase="low"),
     "per_coin.a.naive.mase: Input should be a valid number"),
    (lambda d: d["per_coin"].update(a={}), "per_coin.a: holds no model"),
    (lambda d: d["per_coin"].update(a=None), "per_coin.a: should be an object {...}"),
    (lambda d: d["per_coin"]["a"]["naive"].pop("mase") and None,
     "per_coin.a.naive has no 'mase' field"),
    (lambda d: [d], "the file: should be an object {...}"),
    (lambda d: d.pop("config"), "(it has no 'config' field)"),
    (lambda d: d["config"].update(colour="red"), "unexpected keyword argument 'colour'"),
    (lambda d: d["config"].pop("models") and None, "config has no 'models' field"),
    (lambda d: d["config"].update(models="naive"), "config.models: should be a list"),
    (lambda d: d["per_coin"]["a"]["naive"].update(mase=-1),  # min() arg is an empty sequence
     "per_coin.a.naive.mase: Input should be greater than or equal to 0"),
    (lambda d: d["per_coin"]["a"].update(prophet={"mase": 0.1}),
     "per_coin.a.prophet: 'prophet' is no model of this version"),  # chose it, then failed
])
def test_a_hand_edited_backtest_file_is_one_line_naming_the_field(
        tmp_path: Path, change: Any, says: str) -> None:
    (tmp_path / "bt.json").write_text(json.dumps(_edited(change)))
    with pytest.raises(ConfigError) as error:
        load_saved(tmp_path / "bt.json")
    message = str(error.value)
    assert message.startswith(f"cannot read the backtest {tmp_path / 'bt.json'} ("), message
    assert says in message and "\n" not in message, message


@pytest.mark.integration
def test_backtest_on_the_cluster_matches_the_hand_computation(cluster: object) -> None:
    settings = Settings(data_dir=DATA).with_broker(cluster.broker_url)  # type: ignore[attr-defined]
    manager = CryptoManager(loader=CryptoLoader(DATA), app=create_app(settings))
    result = run_backtest(manager, SMALL)
    assert result.skipped.keys() == {"stub"} and "3 closes" in result.skipped["stub"]
    walk = result.per_coin["walk"]
    assert walk["naive"]["mase"] == pytest.approx(NAIVE_MASE)
    assert walk["naive"]["mae"] == pytest.approx(NAIVE_MAE)
    assert walk["naive"]["rmse"] == pytest.approx(math.sqrt((1 + 9 + 4 + 1) / 4))
    assert walk["linear"]["mae"] == pytest.approx(LINEAR_MAE)
    assert result.best() == {"walk": ("linear", pytest.approx(walk["linear"]["mase"]))}
    assert result.windows["walk"] == ["2021-01-06", "2021-01-08"]
    assert result.aggregate()["naive"]["mase_mean"] == pytest.approx(NAIVE_MASE)
    assert walk["linear"]["rel_mae"] == pytest.approx(LINEAR_MAE / NAIVE_MAE)
    assert result.aggregate()["linear"]["rel_mae"] == pytest.approx(LINEAR_MAE / NAIVE_MAE)
    for model in ("naive", "linear"):  # every forecast carried intervals, and they are scored
        for level in ("80", "95"):
            assert 0 <= walk[model][f"coverage_{level}"] <= 100
            assert walk[model][f"winkler_{level}"] > 0


@pytest.mark.integration  # trains networks
def test_returns_model_is_reproducible_with_its_seed() -> None:
    rng = np.random.default_rng(3)
    series = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.03, 60)))
    options = {"epochs": 2, "members": 2, "window": 8}
    first = get_model("lstm_ret", **options).fit(series).forecast(3)
    again = get_model("lstm_ret", **options).fit(series).forecast(3)
    other = get_model("lstm_ret", **options, seed=7).fit(series).forecast(3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.integration
def test_cli_backtest_writes_files_and_best_uses_them(cluster: object, tmp_path: Path) -> None:
    env = {"CRYPTO_ML_BROKER_URL": cluster.broker_url}  # type: ignore[attr-defined]
    out = tmp_path / "bt"
    done = run_cli("backtest", "--model", "naive,linear", "--horizon", "2", "--origins", "2",
                   "--min-train", "4", "--out", str(out), env=env, data_dir=DATA)
    assert done.returncode == 0, done.stderr
    assert "walk" in done.stdout and "beats naive" in done.stdout
    assert "stub (3 closes" in done.stdout
    saved = json.loads((out / "backtest.json").read_text())
    assert saved["best"]["walk"]["model"] == "linear"
    assert saved["per_coin"]["walk"]["naive"]["mase"] == pytest.approx(NAIVE_MASE)
    rows = list(csv.DictReader((out / "backtest.csv").open()))
    assert {(r["coin"], r["model"]) for r in rows} >= {("walk", "naive"), ("*mean*", "linear")}
    assert (out / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = tmp_path / "data"  # the backtest's coins and one it has nothing on
    shutil.copytree(DATA, data)
    shutil.copy(DATA / "Walk.csv", data / "Other.csv")
    best = run_cli("send-tasks", "--model", "best", "--backtest", str(out / "backtest.json"),
                   "--horizon", "2", "-v", env=env, data_dir=data)
    assert best.returncode == 0, best.stderr
    assert "best: walk -> linear" in best.stderr
    assert "best: stub -> naive (not backtested: 3 closes" in best.stderr
    assert "note: 1 of 3 coins are not in the backtest (other): they get naive" in best.stderr
    lines = dict(line.split(" ", 1) for line in best.stdout.splitlines())
    assert lines["walk"].startswith("linear [[") and lines["stub"] == "naive [[3. 3.]]"
    assert lines["other"].startswith("naive [[")


@pytest.mark.integration  # runs a command in a subprocess
def test_cli_backtest_compares_windows(cluster: object, tmp_path: Path) -> None:
    env = {"CRYPTO_ML_BROKER_URL": cluster.broker_url}  # type: ignore[attr-defined]
    done = run_cli("backtest", "--model", "naive,linear", "--horizon", "2", "--origins", "2",
                   "--min-train", "4", "--max-points", "3,all", "--levels", "90",
                   "--out", str(tmp_path), env=env, data_dir=DATA)
    assert done.returncode == 0, done.stderr
    assert "== window: 3 ==" in done.stdout and "== window: all ==" in done.stdout
    assert "windows compared" in done.stdout and "cov 90" in done.stdout
    for window in ("3", "all"):  # each window's progress counts its own tasks to the end
        assert re.search(rf"progress: window {window}: (\d+)/\1 finished", done.stderr), \
            done.stderr
    table = (tmp_path / "windows.txt").read_text()
    linear = [line.split() for line in table.splitlines() if line.startswith("linear")]
    assert [row[1] for row in linear] == ["3", "all"]
    assert sum(row[2] == "*" for row in linear) == 1  # the best window of the model is marked
    short = json.loads((tmp_path / "window-3" / "backtest.json").read_text())
    whole = json.loads((tmp_path / "window-all" / "backtest.json").read_text())
    assert short["config"]["max_points"] == 3 and whole["config"]["max_points"] == 0
    assert whole["per_coin"]["walk"]["linear"]["mae"] == pytest.approx(LINEAR_MAE)
    assert short["per_coin"]["walk"]["linear"]["mae"] != pytest.approx(LINEAR_MAE)


@pytest.mark.integration  # runs a command in a subprocess
def test_a_backtest_no_coin_is_long_enough_for_is_an_error_before_any_task() -> None:
    # Walk has 8 closes, Stub 3: a 7-day horizon at 2 origins after 4 closes needs 12
    too_long = BacktestConfig(models=("naive",), horizon=7, origins=2, min_train=4)
    manager = SimpleNamespace(loader=CryptoLoader(DATA))  # nothing else is reached
    with pytest.raises(ConfigError) as error:
        run_backtest(manager, too_long)  # type: ignore[arg-type]
    message = str(error.value)
    assert message.startswith("no coin can be backtested: ")
    assert "walk: 8 closes, fewer than the 12 this backtest needs" in message
    assert "stub: 3 closes" in message and "lower --horizon" in message


def test_cli_refuses_a_backtest_no_coin_is_long_enough_for_before_any_cluster() -> None:
    # it had started Redis and the workers first, then said so
    run = run_cli("backtest", "--horizon", "7", "--origins", "2", "--min-train", "4",
                  "--model", "naive", data_dir=DATA)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("crypto-ml: error: no coin can be backtested: "), run.stderr


def test_cli_rejects_a_bad_until_date_and_unknown_model(tmp_path: Path) -> None:
    bad = run_cli("backtest", "--until", "yesterday", data_dir=DATA)
    assert bad.returncode == 2 and "expected a date like" in bad.stderr
    unknown = run_cli("backtest", "--model", "naive,prophet", data_dir=DATA)
    assert unknown.returncode == 2 and "prophet" in unknown.stderr
    assert "Traceback" not in unknown.stderr


@pytest.mark.integration
def test_best_without_a_saved_backtest_runs_one_and_falls_back_to_naive(
        cluster: object, caplog: pytest.LogCaptureFixture) -> None:
    import io
    import logging

    from crypto_ml.backtest.best import DEFAULT_CANDIDATES, forecast_best

    settings = Settings(data_dir=DATA).with_broker(cluster.broker_url)  # type: ignore[attr-defined]
    out, err = io.StringIO(), io.StringIO()
    manager = CryptoManager(loader=CryptoLoader(DATA), app=create_app(settings), out=out, err=err)
    caplog.set_level(logging.INFO, logger="crypto_ml.backtest.best")
    report = forecast_best(manager, ["walk", "stub"], horizon=3)
    n_candidates = len(DEFAULT_CANDIDATES.split(","))
    assert f"backtest: 0 coin(s) x {n_candidates} model(s)" in err.getvalue()  # 8 closes: < 30
    assert "best: walk -> naive (not backtested: 8 closes" in caplog.text  # shown with -v
    assert report.forecasts("naive")["walk"].tolist() == [7.0, 7.0, 7.0]
    assert out.getvalue().splitlines()[0].split()[:2] in (["walk", "naive"], ["stub", "naive"])


@pytest.mark.integration
def test_best_with_retrain_asks_each_forecast_to_retrain(
        cluster: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from crypto_ml.backtest.best import forecast_best

    settings = Settings(data_dir=DATA).with_broker(cluster.broker_url)  # type: ignore[attr-defined]
    manager = CryptoManager(loader=CryptoLoader(DATA), app=create_app(settings), out=io.StringIO(),
                            err=io.StringIO())
    sent: list[object] = []
    monkeypatch.setattr(manager, "dispatch", lambda requests, *args, **kwargs: sent.extend(requests))
    forecast_best(manager, ["walk"], horizon=3, retrain=True)  # 8 closes: naive, not backtested
    assert [(r.coin, r.model, r.retrain) for r in sent] == [  # type: ignore[attr-defined]
        ("walk", "naive", True)]
