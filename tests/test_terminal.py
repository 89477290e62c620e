"""The terminal as a user meets it (issue 16), each point through the real command.

Quiet by default (forecasts on stdout; progress, notices and a summary on stderr; a line
per task only with -v; nothing but errors with -q), one stdout format, arguments checked
before any cluster starts, coin ids in any case, the whole run's time and each model's
device in the summary, and --plot panels in the order of --coins.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli_env, on_a_terminal, run_cli, shown_lines

from crypto_ml.cli.requests import check_not_prices, check_writable
from crypto_ml.core.errors import ConfigError
from crypto_ml.models import DEFAULT_MODEL

pytestmark = pytest.mark.integration

COINS = ["bitcoin", "ethereum", "ripple", "litecoin", "dash", "monero", "nem", "dogecoin",
         "namecoin", "peercoin", "vertcoin", "viacoin"]
LINE = re.compile(r"^(\S+) (\S+) \[\[[-+0-9.e ]+\]\]$")  # coin model [[f1 f2 ...]]
TASK_LINE = re.compile(r"task [0-9a-f-]{36} ok: coin=")


def broker(cluster: Any) -> list[str]:
    return ["--broker", cluster.broker_url]


def parsed(stdout: str) -> list[tuple[str, str]]:
    """(coin, model) of each stdout line, every line in the one documented format."""
    lines = stdout.splitlines()
    assert lines and all(LINE.match(line) for line in lines), stdout
    return [(m.group(1), m.group(2)) for m in map(LINE.match, lines) if m]


def test_default_is_progress_and_summary_v_adds_task_lines_q_leaves_forecasts_only(
        cluster: Any, price_data: Path) -> None:
    args = ["send-tasks", "--model", "naive,linear", "--coins", ",".join(COINS), *broker(cluster)]
    default = run_cli(*args, data_dir=price_data)
    assert default.returncode == 0, default.stderr
    assert sorted(parsed(default.stdout)) == sorted((c, m) for c in COINS
                                                     for m in ("naive", "linear"))
    err = default.stderr.splitlines()
    assert not TASK_LINE.search(default.stderr) and "INFO" not in default.stderr
    assert 2 <= sum(line.startswith("progress: ") for line in err) <= 4  # a few plain lines
    assert any(line.startswith(f"summary: {len(COINS)} coin(s) ok, 0 failed") for line in err)
    assert len(err) <= 12, default.stderr

    verbose = run_cli(*args, "-v", data_dir=price_data)
    assert verbose.returncode == 0 and len(TASK_LINE.findall(verbose.stderr)) == 2 * len(COINS)
    assert verbose.stdout.count("\n") == 2 * len(COINS)

    quiet = run_cli(*args, "-q", data_dir=price_data)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert len(parsed(quiet.stdout)) == 2 * len(COINS)


def test_model_best_is_as_quiet_and_names_the_model_on_each_line(cluster: Any,
                                                                price_data: Path) -> None:
    # two cheap candidates: this is about what the terminal shows (tests/test_backtest.py runs
    # the default candidates; here they cost over a minute for the three runs)
    args = ["send-tasks", "--model", "best", "--candidates", "naive,linear", "--coins",
            ",".join(COINS), "--horizon", "3", *broker(cluster)]
    run = run_cli(*args, data_dir=price_data)
    assert run.returncode == 0, run.stderr
    chosen = dict(parsed(run.stdout))
    candidates = {"naive", "linear"}
    assert set(chosen) == set(COINS) and set(chosen.values()) <= candidates
    err = run.stderr.splitlines()
    assert "best: " not in run.stderr and not TASK_LINE.search(run.stderr)
    assert sum(line.startswith("progress: backtest: ") for line in err) <= 4
    assert sum(line.startswith("progress: forecast: ") for line in err) <= 4
    assert len(err) <= 16, run.stderr  # was a line per backtest task and each step twice
    verbose = run_cli(*args, "-v", data_dir=price_data)
    assert all(f"best: {coin} -> {model} (" in verbose.stderr for coin, model in chosen.items())
    quiet = run_cli(*args, "-q", data_dir=price_data)
    assert quiet.stderr == "" and dict(parsed(quiet.stdout)) == chosen


def test_one_stdout_format_json_lines_and_output(cluster: Any, price_data: Path,
                                                 tmp_path: Path) -> None:
    single = run_cli("send-tasks", "--coins", "bitcoin,dash", "-q", *broker(cluster),
                     data_dir=price_data)
    assert sorted(parsed(single.stdout)) == [("bitcoin", DEFAULT_MODEL), ("dash", DEFAULT_MODEL)]
    out = tmp_path / "out" / "results.json"
    out.parent.mkdir()  # --output does not make a missing folder: that is an error
    lines = run_cli("send-tasks", "--coins", "bitcoin,dash", "--model", "naive,linear",
                    "--format", "json-lines", "--output", str(out), "-q", *broker(cluster),
                    data_dir=price_data)
    assert lines.returncode == 0, lines.stderr
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    saved = json.loads(out.read_text())["results"]
    assert len(records) == 4
    for record in records:
        assert record == saved[record["coin"]][record["model"]]
        assert record["device"] == "CPU" and len(record["forecast"]) == 10


@pytest.mark.parametrize(("args", "says"), [
    (["send-tasks", "--coins", "bitcoin,notacoin"], "unknown coin(s) 'notacoin'"),
    (["send-tasks", "--coins", "bitcoin,etherium"], "did you mean ethereum"),
    (["send-tasks", "--model", "linear,prophet"], "unknown model 'prophet'"),
    (["send-tasks", "--model", "best", "--candidates", "naive,prophet"], "prophet"),
    (["send-tasks", "--model", "best", "--backtest", "no/such/backtest.json"],
     "cannot read the backtest"),
    (["send-tasks", "--model", "best", "--backtest", "docs/openapi.json"],  # JSON, not one
     "cannot read the backtest docs/openapi.json (it has no 'config' field)"),
    (["send-tasks", "--model", "linear", "--backtest", "docs/openapi.json"],
     "--backtest is for --model best (it picks each coin's model); got --model linear"),
    (["send-tasks", "--candidates", "naive,ets"], "--candidates is for --model best"),
    (["send-tasks", "--model", "naive,ets", "--epochs", "3"],
     "--epochs: none of naive, ets takes it; they take no option"),
    (["send-tasks", "--coins", "bitcoin", "--output", "."], "--output . is a folder"),
    # the name of a price file: it was written over with JSON, and that coin was gone
    (["send-tasks", "--coins", "bitcoin", "--output", "Ethereum.CSV"],
     "--output Ethereum.CSV: a run over the data folder writes JSON; name it *.json"),
    (["send-tasks", "--coins", "bitcoin", "--plot", "README.md/forecast.png"],
     "--plot README.md/forecast.png: cannot write in README.md"),
    (["send-tasks", "--coins", "bitcoin", "--plot", "/tmp/forecast.txt"],
     "--plot /tmp/forecast.txt: name the picture's file with one of ."),
    (["backtest", "--coins", "Bitcoin,notacoin"], "unknown coin(s) 'notacoin'"),
    # a folder no file can be made in, whatever its permissions say (as root too)
    (["backtest", "--coins", "bitcoin", "--out", "/proc/crypto-ml-nope"],
     "--out /proc/crypto-ml-nope/backtest.json: cannot write in /proc"),
    (["backtest", "--coins", "bitcoin", "--model", "lstm", "--param", "epochs=2", "--epochs",
      "3"], "--param epochs and --epochs both set epochs; give one"),
    (["send-tasks", "--horizon", "0"], "must be at least 1"),
    (["queue-depth", "--broker", "notaurl"], "notaurl is no Redis URL (Redis URL must"),
    (["queue-depth", "--broker", "redis://:pw@127.0.0.1:99999/0"],
     "redis://:**@127.0.0.1:99999/0 is no Redis URL (Port out of range"),
    (["send-tasks", "--levels", " "], "--levels: names no level; give levels such as 80,95"),
    (["send-tasks", "--levels", " , "], "--levels: names no level; give levels such as 80,95"),
    (["send-tasks", "--timeout", "1e308"], "must be a number of seconds above 0, at most"),
    (["backtest", "--timeout", "1e14"], "must be a number of seconds above 0, at most"),
])
def test_arguments_are_checked_before_any_cluster_starts(args: list[str], says: str,
                                                         price_data: Path) -> None:
    started = time.monotonic()
    run = run_cli(*args, data_dir=price_data, timeout=120)  # no broker: embedded if it got far
    assert run.returncode == 2, run.stderr
    assert says in run.stderr and "running embedded" not in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 or args[-1] == "0"  # argparse: usage too
    assert time.monotonic() - started < 60  # an import, not a cluster start (a loaded machine)


def test_an_output_link_is_checked_where_it_leads(tmp_path: Path) -> None:
    """A link is written through: a dangling one passed the check and failed after the whole
    run; one to a price file would have been written over (an outside probe)."""
    dangling, loop, to_prices = tmp_path / "out.json", tmp_path / "loop.json", tmp_path / "p.json"
    dangling.symlink_to(tmp_path / "missing" / "out.json")
    loop.symlink_to(loop)
    to_prices.symlink_to(tmp_path / "Bitcoin.csv")
    with pytest.raises(ConfigError, match=r"out.json \(a link to .*missing/out.json\): the "
                       r"folder .*missing does not exist"):
        check_writable(dangling, "--output")
    with pytest.raises(ConfigError, match=r"loop\.json is a link that leads nowhere"):
        check_writable(loop, "--output")
    with pytest.raises(ConfigError, match=r"p.json is a link to .*Bitcoin.csv, a name the data "
                       "folder reads as prices"):
        check_not_prices(to_prices)
    chart = tmp_path / "chart.png"  # savefig writes through it too (a review)
    chart.symlink_to(tmp_path / "Bitcoin.csv")
    with pytest.raises(ConfigError, match=r"--plot .*chart.png is a link to .*Bitcoin.csv"):
        check_not_prices(chart, "--plot")
    (tmp_path / "missing").mkdir()
    check_writable(dangling, "--output")  # where it leads can be written now
    check_not_prices(dangling)


def test_backtest_refuses_an_out_folder_it_could_not_finish_writing(price_data: Path,
                                                                   tmp_path: Path) -> None:
    # a folder where the chart goes: found before the backtest runs, not after it
    (tmp_path / "backtest.png").mkdir()
    run = run_cli("backtest", "--coins", "bitcoin", "--model", "naive", "--out", str(tmp_path),
                  data_dir=price_data, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (f"crypto-ml: error: --out {tmp_path / 'backtest.png'} is a "
                                  "folder; give a file name")
    assert not (tmp_path / "backtest.json").exists()


def test_coin_names_match_in_any_case_and_print_as_ids(cluster: Any, price_data: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = run_cli("send-tasks", "--model", "naive", "--coins", "Bitcoin,ETHEREUM,Bitcoin Cash",
                  "--output", str(out), *broker(cluster), data_dir=price_data)
    assert run.returncode == 0, run.stderr
    assert sorted(parsed(run.stdout)) == [("bitcoin", "naive"), ("bitcoin_cash", "naive"),
                                          ("ethereum", "naive")]
    assert sorted(json.loads(out.read_text())["results"]) == ["bitcoin", "bitcoin_cash",
                                                              "ethereum"]


def test_summary_times_the_whole_run_and_names_each_models_device(price_data: Path) -> None:
    # A shell that works first, then execs the command in its own process (as `sh -c
    # "pip install ... && python -m ..."` does): that work is not the run's.
    before = 2.0
    command = shlex.join([sys.executable, "-m", "crypto_ml.manager", "send-tasks", "--model",
                          "naive,linear", "--coins", "bitcoin,dash", "--workers", "1"])
    started = time.monotonic()
    run = subprocess.run(["sh", "-c", f"sleep {before}; exec {command}"], cwd=ROOT,
                         env=cli_env(price_data), capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started - before
    assert run.returncode == 0, run.stderr
    found = re.search(r"^summary: 2 coin\(s\) ok, 0 failed, in ([\d.]+) s", run.stderr, re.M)
    assert found, run.stderr
    # the cluster's start-up and the imports count: the run, not only the wait for results
    assert 0.7 * elapsed <= float(found.group(1)) <= elapsed + 0.1, (elapsed, run.stderr)
    for model in ("naive", "linear"):
        assert re.search(rf"^  {model}: 2 fit\(s\), .* s, on CPU$", run.stderr, re.M), run.stderr


def test_plot_panels_follow_the_order_of_coins(cluster: Any, price_data: Path,
                                               tmp_path: Path) -> None:
    plot = tmp_path / "forecast.png"
    run = run_cli("send-tasks", "--model", "naive", "--coins", "litecoin,bitcoin,dash",
                  "--plot", str(plot), *broker(cluster), data_dir=price_data)
    assert run.returncode == 0, run.stderr
    assert f"plot: {plot} (3 panel(s): litecoin, bitcoin, dash;" in run.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_on_a_terminal_and_none_with_quiet(cluster: Any, price_data: Path) -> None:
    args = ["send-tasks", "--model", "best", "--candidates", "naive,linear", "--coins",
            ",".join(COINS[:4]), *broker(cluster)]
    stdout, screen, rc = on_a_terminal(args, price_data)
    assert rc == 0, screen
    bars = re.findall(r"\r(\[[#-]+\] [^\r\n]*)", screen)  # each drawing of the bar
    assert any("backtest: " in bar for bar in bars), screen  # one bar, phase by phase
    assert all("finished:" in bar and "ETA" in bar for bar in bars), screen
    assert not [line for line in shown_lines(screen) if "finished:" in line], screen  # wiped
    assert "progress: " not in screen and not TASK_LINE.search(screen)
    assert screen.rstrip().splitlines()[-1].startswith("  workers: ")
    assert len(parsed(stdout)) == 4
    stdout, screen, rc = on_a_terminal([*args, "-q"], price_data)
    assert rc == 0 and screen == "" and len(parsed(stdout)) == 4


def test_backtest_follows_the_same_rule(cluster: Any, price_data: Path) -> None:
    args = ["backtest", "--coins", "Bitcoin,dash", "--origins", "3", *broker(cluster)]
    default = run_cli(*args, data_dir=price_data)
    assert default.returncode == 0, default.stderr
    assert "bitcoin" in default.stdout and "beats naive" in default.stdout
    err = default.stderr.splitlines()
    assert err[0].startswith("backtest: 2 coin(s) x 2 model(s) x 3 origin(s)")
    assert 1 <= sum(line.startswith("progress: ") for line in err) <= 4 and len(err) <= 6
    verbose = run_cli(*args, "-v", data_dir=price_data)
    assert len(TASK_LINE.findall(verbose.stderr)) == 2 * 2 * 3  # coins x models x origins
    # one line per forecast, each of its own: a message's origins differ in their last close
    told = re.findall(r"ok: coin=(\S+) model=(\S+) worker=\S+ seconds=\S+ closes_to=(\S+)",
                      verbose.stderr)
    assert len(set(told)) == 2 * 2 * 3, verbose.stderr
    quiet = run_cli(*args, "-q", data_dir=price_data)
    assert quiet.returncode == 0 and quiet.stderr == "" and "beats naive" in quiet.stdout
