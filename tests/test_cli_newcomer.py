"""The command line as a newcomer meets it: one line per error, quiet ends, help that
teaches, nothing left behind.

Usage errors are one ``crypto-ml: error:`` line (exit 2) and ``--version`` answers; a closed
stdout ends the run quietly; ``--output`` and ``--plot`` need an existing folder, and
results that cannot be written after the run go to a fallback file; ``-q`` is errors only;
an unreadable data file is named before any cluster starts; model names match in any case;
``--max-points`` below what the models need is refused; Ctrl-C ends ``cluster up`` with 130
(SIGTERM with 0) and a second Ctrl-C leaves no process behind; progress counts forecasts on every stream,
with no control codes on a dumb terminal; every subcommand's help has examples and exit
codes; ``--model best`` ties within 0.5 %; ``data download`` without a network fails at
once.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, cli_env, hangups_heard, on_a_terminal, run_cli

from crypto_ml.backtest.engine import TIE_TOLERANCE, BacktestConfig, BacktestResult
from crypto_ml.cli import build_parser, guarded, main
from crypto_ml.cli.output import write_results
from crypto_ml.cli.requests import backtest_request, check_writable, send_request
from crypto_ml.core.errors import ConfigError, SeriesTooShort, UnknownModel
from crypto_ml.core.progress import Progress, is_terminal
from crypto_ml.data.download import Client, DownloadError
from crypto_ml.dispatch.cluster import workers_problem
from crypto_ml.ops.processes import wait_until

COINS = "bitcoin,ethereum,dash"


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``crypto-ml ARGV`` in this process, for what argparse answers before any run."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def crypto_ml(*args: str, cwd: Path = ROOT, data_dir: Path | None = None,
              timeout: float = 300, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``python -m crypto_ml ARGS`` in a subprocess, in ``cwd``."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.run([sys.executable, "-m", "crypto_ml", *args], cwd=cwd,
                          env=cli_env(data_dir), text=True, timeout=timeout, **streams)


# --- 1. one line per error, --version ---------------------------------------------------------

@pytest.mark.parametrize(("argv", "says"), [
    (["send-tasks", "--horizon", "0"], "argument --horizon: must be at least 1, got 0"),
    (["send-tasks", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["send-tasks", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    # argparse's own words named our function: "invalid positive_int value"
    (["backtest", "--origins", "x"], "argument --origins: must be a whole number at least 1, "
                                     "got 'x'"),
    (["backtest", "--max-points", "100,abc"], "argument --max-points: must be a whole number "
                                              "at least 1, or all, got 'abc'"),
    (["cluster"], "the following arguments are required"),
    (["data", "download", "--top", "-3"], "must be at least 1"),
    (["send-tasks", "--timeout", "-1"], "argument --timeout: must be a number of seconds above 0, at most"),
    (["send-tasks", "--timeout", "nan"], "argument --timeout: must be a number of seconds above 0, at most"),
    (["queue-depth", "--port", "70000"], "argument --port: must be a TCP port, 1 to 65535, got 70000"),
    (["data", "download", "--api-url", "notaurl"],
     "argument --api-url: must be an http:// or https:// URL, got 'notaurl'"),
    (["data", "download", "--interval", "-1"], "argument --interval: must be a finite number"),
    (["data", "download", "--retries", "-1"], "argument --retries: must be 0 or more, got -1"),
    (["send-tasks", "--input", "t.parquet", "--output", "o.parquet", "--in-flight", "0"],
     "argument --in-flight: must be at least 1, got 0"),
    # an empty path was the working directory: backtest --out "" wrote there
    (["backtest", "--out", ""], "argument --out: expected a path, got an empty string"),
    (["send-tasks", "--output", " "], "argument --output: expected a path, got an empty string"),
    (["send-tasks", "--input", "", "--output", "o.parquet"], "argument --input: expected a path"),
    (["send-tasks", "--data-dir", ""], "argument --data-dir: expected a path"),
    (["backtest", "--out", "x" * 300], "is longer than the 255 bytes a file system allows"),
    (["send-tasks", "--model", "best", "--candidates", ""],  # was the default candidates
     "argument --candidates: names no model, got ''"),
    (["send-tasks", "--model", " , "], "argument --model: names no model"),
])
def test_a_usage_error_is_one_line_and_exit_2(argv: list[str], says: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert len(lines(err)) == 1, err
    assert err.startswith("crypto-ml: error: ") and says in err and "usage:" not in err


@pytest.mark.parametrize(("argv", "says"), [
    (["send-tasks", "--coins", "bitcoin", "--broker", "redis://:pw0@127.0.0.1:99999/0"],
     "redis://:**@127.0.0.1:99999/0 is no Redis URL (Port out of range"),
    (["send-tasks", "--coins", "bitcoin", "--broker",
      "sentinel://w:pw1@127.0.0.1:1/0;sentinel://w:pw2@127.0.0.1:2/0"],
     "sentinel://w:**@127.0.0.1:1/0;sentinel://w:**@127.0.0.1:2/0 (no Sentinel there names"),
    (["send-tasks", "--coins", "bitcoin", "--output", "same.png", "--plot", "./same.png"],
     "it is --output too"),
    (["queue-depth", "--broker", "redis://127.0.0.1:1/0", "--queues", " , "],
     "--queues names no queue"),
])
def test_urls_and_paths_a_probe_broke_are_one_line_and_exit_2(
        argv: list[str], says: str, price_data: Path, tmp_path: Path) -> None:
    # tracebacks from kombu's URL sanitizer, redis-py's dump of every Sentinel client, a
    # second Sentinel's password in clear, results replaced by the picture
    run = crypto_ml(*argv, cwd=tmp_path, data_dir=price_data, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert says in run.stderr and not re.search(r"pw\d", run.stderr), run.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_refusal_is_a_json_line_where_the_logs_are(price_data: Path, tmp_path: Path) -> None:
    # --log-format json made every log line JSON but the refusal, which a log pipeline missed
    run = crypto_ml("send-tasks", "--log-format", "json", "--coins", "nope", cwd=tmp_path,
                    data_dir=price_data, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    line = json.loads(run.stderr)
    assert line["level"] == "ERROR" and "unknown coin(s) 'nope'" in line["message"]


@pytest.mark.parametrize(("option", "value"), [("--plot", "p.png"), ("--format", "json-lines")])
def test_a_folder_option_with_a_table_is_refused_not_dropped(
        option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send-tasks", "--input", "t.parquet", "--output", "o.parquet", option,
                 value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and lines(err) == [
        f"crypto-ml: error: {option} is for the data folder; a table run writes its forecasts "
        "to --output OUT.parquet and nothing to stdout"]


@pytest.mark.parametrize(("argv", "says"), [
    (["send-tasks", "--id-col", "coin"], "--id-col is for table runs (--input TABLE); this run "
     "reads the data folder"),
    (["send-tasks", "--overwrite"], "--overwrite is for table runs"),
    (["send-tasks", "--chunk-series", "10"], "--chunk-series is for table runs"),
    (["backtest", "--value-col", "close"], "--value-col is for a table (--input TABLE); this "
     "backtest reads the data folder"),
    (["send-tasks", "--model", "naive,linear", "--retrain"], "--retrain is for the models whose "
     "fits the model store keeps (lstm, gru, lstm_ret, gru_ret); naive, linear are fitted afresh "
     "every time"),
    (["send-tasks", "--model", "best", "--candidates", "naive,theta", "--retrain"],
     "--retrain is for the models whose fits the model store keeps"),
    (["send-tasks", "--model", "best", "--candidates", "naive,theta", "--epochs", "3"],
     "--epochs: none of naive, theta takes it; they take no option"),
    (["send-tasks", "--model", "best", "--candidates", "naive,theta", "--max-points", "5"],
     "--max-points 5 is too few: naive fits and calibrates its prediction intervals on at least "
     "20 closes"),
    (["send-tasks", "--model", "best", "--backtest", "b.json", "--candidates", "ets"],
     "--candidates is for --model best without --backtest"),
    (["send-tasks", "--model", "best", "--backtest", "b.json", "--output", "./b.json"],
     "--output b.json is the --backtest file it reads"),  # written over it, exit 0
    (["backtest", "--model", "naive", "--epochs", "2"],
     "--epochs: naive does not take it; it takes no option"),
    (["backtest", "--model", "naive,linear", "--seed", "3"],
     "--seed: none of naive, linear takes it"),
    (["send-tasks", "--input", "t.parquet", "--output", "o.parquet", "--data-dir", "d"],
     "--data-dir is for the data folder; a table run reads --input"),
    (["backtest", "--input", "t.parquet", "--data-dir", "d"],
     "--data-dir is for the data folder; this backtest reads --input"),
    (["send-tasks", "--broker", "redis://127.0.0.1:1/0", "--workers", "3"],
     "--workers sizes the embedded cluster; with --broker the broker's own workers run the "
     "tasks"),
    (["send-tasks", "--input", "t.parquet", "--output", "o.parquet", "--retrain"],
     "--retrain is for the data folder's runs (the model store); a table run fits every series "
     "afresh"),
])
def test_an_option_that_does_not_apply_is_refused_not_ignored(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(lines(err)) == 1 and err.startswith(f"crypto-ml: error: {says}")


def test_workers_with_a_broker_from_the_environment_is_refused_not_ignored(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CRYPTO_ML_BROKER_URL", "redis://127.0.0.1:1/0")
    assert main(["send-tasks", "--workers", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and lines(err) == [
        "crypto-ml: error: --workers sizes the embedded cluster; with CRYPTO_ML_BROKER_URL the "
        "broker's own workers run the tasks (scale them there)"]


def test_a_ctrl_c_while_the_command_imports_is_one_line_and_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.import_module

    def interrupted(name: str, *args: Any) -> Any:
        if name == "crypto_ml.cli.send":
            raise KeyboardInterrupt
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", interrupted)
    try:
        code = main(["send-tasks"])
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped main() as a traceback")
    assert code == 130
    out, err = capsys.readouterr()
    assert out == "" and lines(err) == ["crypto-ml: interrupted; nothing was started"]


def test_a_ctrl_c_while_the_command_line_itself_imports_is_one_line_and_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # the crypto-ml script and `python -m crypto_ml(.manager)` start here, before any import of
    # the command line (numpy, the models...): a Ctrl-C there is not a traceback either
    import builtins

    from crypto_ml.__main__ import start
    real = builtins.__import__

    def interrupted(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "crypto_ml.cli":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    try:
        code = start()
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped start() as a traceback")
    assert code == 130
    assert capsys.readouterr().err == "crypto-ml: interrupted; nothing was started\n"


def test_flower_is_taken_by_a_table_run_too() -> None:
    from crypto_ml.cli.terminal import flower_option

    args = build_parser().parse_args(["send-tasks", "--input", "t.parquet", "--output",
                                      "o.parquet", "--flower"])
    request = send_request(args)
    assert request.table is not None and request.flower
    assert flower_option(request.flower, request.settings) == {"flower": request.settings}


def test_retrain_with_a_model_the_store_keeps_is_taken(price_data: Path) -> None:
    args = build_parser().parse_args(["send-tasks", "--model", "naive,lstm", "--retrain",
                                      "--coins", "bitcoin", "--data-dir", str(price_data)])
    assert send_request(args).retrain


@pytest.mark.parametrize("coins", [",", ""])
def test_coins_that_name_no_coin_are_refused_not_read_as_every_coin(
        coins: str, capsys: pytest.CaptureFixture[str]) -> None:
    # `--coins "$COINS"` with an empty variable: an error before any cluster starts
    assert main(["send-tasks", "--coins", coins]) == 2
    out, err = capsys.readouterr()
    assert out == "" and lines(err) == [
        f"crypto-ml: error: --coins {coins!r} names no coin; leave --coins out for every coin"]


def test_an_unknown_option_points_at_its_commands_help(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["backtest", "--coins", "bitcoin", "--bogus", "1"], capsys)
    assert code == 2 and out == ""
    assert err == ("crypto-ml: error: unrecognized arguments: --bogus 1 "
                   "(see crypto-ml backtest --help)\n")


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["--version"], capsys)
    assert code == 0 and err == ""
    assert out == f"crypto-ml {importlib.metadata.version('crypto-ml')}\n" == "crypto-ml 0.1.0\n"


@pytest.mark.integration  # runs a command in a subprocess
def test_a_usage_error_from_the_shell_is_one_line() -> None:
    run = crypto_ml("send-tasks", "--horizon", "0", timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert len(lines(run.stderr)) == 1 and run.stderr.startswith("crypto-ml: error: "), run.stderr


# --- 2. a closed stdout ends the run quietly ----------------------------------------------------

@pytest.mark.integration  # a cluster and a command in a subprocess
@pytest.mark.parametrize("fmt", ["text", "json-lines"])
def test_a_reader_that_leaves_after_one_line_ends_the_run_quietly(
        fmt: str, cluster: Any, price_data: Path) -> None:
    """``send-tasks ... | head -1``, the reader leaving after its line."""
    proc = subprocess.Popen([sys.executable, "-m", "crypto_ml", "send-tasks", "--coins", COINS,
                             "--model", "naive,linear", "--format", fmt,
                             "--broker", cluster.broker_url],
                            cwd=ROOT, env=cli_env(price_data), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) in (0, 141), err
    coin = json.loads(first)["coin"] if fmt == "json-lines" else first.split()[0]
    assert coin in COINS.split(",") and (fmt == "json-lines" or re.match(r"\S+ \S+ \[\[", first))
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception" not in err, err


@pytest.mark.integration  # a cluster and a command in a subprocess
@pytest.mark.parametrize("fmt", ["text", "json-lines"])
def test_a_reader_gone_before_the_first_line_ends_the_run_quietly(
        fmt: str, cluster: Any, price_data: Path) -> None:
    """The pipe is closed before anything is written: the first forecast line breaks it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = crypto_ml("send-tasks", "--coins", COINS, "--model", "naive,linear", "--format",
                        fmt, "--broker", cluster.broker_url, data_dir=price_data,
                        stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert run.returncode in (0, 141), run.stderr
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr


# --- 3. --output and --plot -----------------------------------------------------------------------

def test_a_missing_folder_is_an_error_and_is_not_made(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "results.json"
    with pytest.raises(ConfigError) as error:
        check_writable(target, "--output")
    message = str(error.value)
    assert str(target) in message and "does not exist" in message and "create it" in message
    assert not (tmp_path / "no").exists()
    check_writable(tmp_path / "results.json", "--output")  # an existing folder is fine


@pytest.mark.integration  # runs a command in a subprocess
@pytest.mark.parametrize("option", ["--output", "--plot"])
def test_a_missing_folder_stops_the_run_before_it_starts(option: str, price_data: Path,
                                                         tmp_path: Path) -> None:
    target = tmp_path / "missing" / ("out.json" if option == "--output" else "plot.png")
    run = run_cli("send-tasks", "--coins", "bitcoin", option, str(target), data_dir=price_data,
                  timeout=120)  # no broker: it would start a cluster if it got that far
    assert run.returncode == 2 and run.stdout == ""
    assert len(lines(run.stderr)) == 1 and "running embedded" not in run.stderr, run.stderr
    assert f"{option} {target}" in run.stderr and "create it" in run.stderr
    assert not target.parent.exists()


def test_results_that_cannot_be_written_go_to_a_fallback_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    monkeypatch.chdir(tmp_path)
    data = {"results": {"bitcoin": {"linear": {"forecast": [1.0, 2.0]}}}, "failed": {}}
    assert write_results(Path("/dev/full"), data) is False
    [fallback] = tmp_path.glob("crypto-ml-results-*.json")
    assert json.loads(fallback.read_text()) == data
    [record] = [r for r in caplog.records if r.name == "crypto_ml.console"]
    assert "/dev/full" in record.getMessage() and str(fallback) in record.getMessage()
    assert write_results(tmp_path / "ok.json", data) is True


def test_results_go_to_the_temporary_folder_when_the_current_one_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    gone, temporary = tmp_path / "gone", tmp_path / "tmp"
    gone.mkdir()
    temporary.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # the current folder was removed during the run: nothing can be made in it
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    data = {"results": {"dash": {"naive": {"forecast": [3.0]}}}, "failed": {}}
    assert write_results(Path("/dev/full"), data) is False
    [fallback] = temporary.glob("crypto-ml-results-*.json")
    assert json.loads(fallback.read_text()) == data
    [record] = [r for r in caplog.records if r.name == "crypto_ml.console"]
    assert f"the results are in {fallback} instead" in record.getMessage()


@pytest.mark.integration  # a cluster and a command in a subprocess
def test_output_failing_after_the_run_keeps_the_results(cluster: Any, price_data: Path,
                                                        tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    run = crypto_ml("send-tasks", "--coins", "bitcoin,dash", "--output", "/dev/full", "-q",
                    "--broker", cluster.broker_url, cwd=tmp_path, data_dir=price_data)
    assert run.returncode == 1, run.stderr
    assert len(lines(run.stdout)) == 2  # the forecasts were printed all the same
    [fallback] = tmp_path.glob("crypto-ml-results-*.json")
    assert sorted(json.loads(fallback.read_text())["results"]) == ["bitcoin", "dash"]
    [line] = lines(run.stderr)
    assert "cannot write --output /dev/full" in line and str(fallback) in line


@pytest.mark.integration  # a cluster and a command in a subprocess
def test_a_plot_failing_after_the_run_is_one_line(cluster: Any, price_data: Path,
                                                  tmp_path: Path) -> None:
    plot = tmp_path / "forecast.png"  # a disk that is full by the end: fails after the run
    plot.symlink_to("/dev/full")
    run = run_cli("send-tasks", "--coins", "bitcoin", "--plot", str(plot), "-q",
                  "--broker", cluster.broker_url, data_dir=price_data)
    assert run.returncode == 1 and len(lines(run.stdout)) == 1
    [line] = lines(run.stderr)
    assert "plot not written" in line and "Traceback" not in run.stderr


# --- 4. -q is errors only ---------------------------------------------------------------------

@pytest.mark.integration  # a cluster, the real data set and a command in a subprocess
def test_quiet_hides_the_warning_of_a_file_that_is_not_prices(cluster: Any,
                                                              real_data: Path) -> None:
    args = ["send-tasks", "--model", "naive", "--horizon", "2", "--broker", cluster.broker_url]
    loud = run_cli(*args, data_dir=real_data)
    assert loud.returncode == 0 and "skipping 100 List.csv" in loud.stderr, loud.stderr
    quiet = run_cli(*args, "-q", data_dir=real_data)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert sorted(lines(quiet.stdout)) == sorted(lines(loud.stdout))


# --- 5. unreadable data ---------------------------------------------------------------------------

@pytest.fixture()
def garbage_data(tmp_path: Path) -> Path:
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "Junk.csv").write_bytes(b"\x00\x01\x02 not,a\x00price\nfile\x00\n")
    return folder


@pytest.mark.integration  # runs a command in a subprocess
@pytest.mark.parametrize(("coins", "says"), [
    (None, "no readable price file in"),
    ("junk", "cannot read the price file of coin 'junk'"),
    ("Junk", "cannot read the price file of coin 'junk'"),
])
def test_an_unreadable_file_is_named_before_any_cluster_starts(
        coins: str | None, says: str, garbage_data: Path) -> None:
    run = run_cli("send-tasks", *(["--coins", coins] if coins else []), data_dir=garbage_data,
                  timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    [line] = lines(run.stderr)
    assert says in line and "Junk.csv: the file is binary, not CSV" in line
    assert "running embedded" not in run.stderr and "CryptoLoader()" not in line


@pytest.mark.integration  # runs a command in a subprocess
def test_an_unknown_coin_among_unreadable_files_is_one_line_exit_2(garbage_data: Path) -> None:
    run = run_cli("send-tasks", "--coins", "foo", data_dir=garbage_data, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    [line] = lines(run.stderr)
    assert "unknown coin(s) 'foo'" in line and "CryptoLoader()" not in line


# --- 6. and 7. model names, --max-points ---------------------------------------------------

def parsed(argv: list[str]) -> Any:
    return build_parser().parse_args(argv)


def test_model_names_match_in_any_case_and_best_is_a_choice(price_data: Path) -> None:
    args = parsed(["send-tasks", "--model", "LSTM,Linear", "--candidates", "NAIVE",
                   "--data-dir", str(price_data)])
    assert args.model == "lstm,linear" and args.candidates == "naive"
    assert parsed(["send-tasks", "--model", "Best"]).model == "best"
    assert parsed(["backtest", "--model", "Naive, THETA"]).model == "naive,theta"
    args = parsed(["send-tasks", "--model", "LSTM,Linear", "--data-dir", str(price_data)])
    assert send_request(args).forecasts.models == ("lstm", "linear")  # parsed once, here
    args = parsed(["send-tasks", "--model", "prophet", "--data-dir", str(price_data)])
    with pytest.raises(UnknownModel) as error:
        send_request(args)
    assert "unknown model 'prophet'" in str(error.value) and "best" in str(error.value)
    assert "lstm" in str(error.value)


@pytest.mark.parametrize(("argv", "need"), [
    (["send-tasks", "--model", "linear", "--max-points", "5"], "linear fits and calibrates its prediction "
                                          "intervals on at least 20 closes"),
    (["send-tasks", "--model", "LSTM", "--max-points", "30"], "lstm fits and calibrates its "
                                                             "prediction intervals on at least 51"),
    (["backtest", "--model", "naive,lstm", "--max-points", "200,40"], "lstm fits on at least 51"),
])
def test_a_window_below_what_the_models_need_is_refused(argv: list[str], need: str,
                                                        price_data: Path) -> None:
    args = parsed([*argv, "--data-dir", str(price_data)])
    with pytest.raises(ConfigError) as error:
        (send_request if argv[0] == "send-tasks" else backtest_request)(args)
    message = str(error.value)
    assert need in message and "or all for the whole history" in message
    assert "\n" not in message


def test_a_folder_run_to_a_parquet_file_is_refused(price_data: Path) -> None:
    # it wrote JSON into x.parquet
    args = parsed(["send-tasks", "--output", "x.parquet", "--data-dir", str(price_data)])
    with pytest.raises(ConfigError, match=r"writes JSON; name it \*\.json"):
        send_request(args)


def test_a_window_below_what_the_fallback_model_needs_is_refused() -> None:
    # the fallback is fitted on the same window: every fill failed
    args = parsed(["send-tasks", "--input", "t.parquet", "--output", "o.parquet", "--model",
                   "naive", "--fallback-model", "ets", "--max-points", "5", "--levels", "none"])
    with pytest.raises(ConfigError, match="--max-points 5 is too few: ets fits on at least 10"):
        send_request(args)


def test_an_os_error_no_check_foresaw_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    # a folder this user may not enter: Path.exists() raises (root never sees it)
    def denied() -> int:
        raise PermissionError(13, "Permission denied", "/locked/sub")

    assert guarded(denied, None) == 2
    err = capsys.readouterr().err
    assert err == ("crypto-ml: error: Permission denied: /locked/sub; check the path and its "
                   "permissions\n")

    def disk_full() -> int:
        raise OSError(28, "No space left on device")

    assert guarded(disk_full, None) == 2
    assert capsys.readouterr().err == "crypto-ml: error: No space left on device\n"

    def reader_gone() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):  # main() ends such a run quietly, exit 0
        guarded(reader_gone, None)


@pytest.mark.parametrize(("argv", "says"), [
    (["send-tasks", "--model", "naive,lstm", "--epochs", "5000"],
     "--model lstm: epochs must be an integer from 1 to 1000, got 5000"),
    (["backtest", "--model", "gru", "--param", "epochs=0"],
     "--model gru: epochs must be an integer from 1 to 1000, got 0"),
    (["backtest", "--model", "lstm,linear", "--param", "epoch=3"],
     "--param epoch: none of lstm, linear takes it; they take epochs, seed, window"),
    (["backtest", "--model", "linear", "--param", "members=1"],
     "--param members: linear does not take it; it takes no option"),
    (["send-tasks", "--horizon", "400"], "--horizon must be at most 365 (CRYPTO_ML_MAX_HORIZON), "
                                         "got 400; set CRYPTO_ML_MAX_HORIZON here and on the "
                                         "workers for more"),
    (["backtest", "--horizon", "366"], "--horizon must be at most 365 (CRYPTO_ML_MAX_HORIZON), "
                                       "got 366; set CRYPTO_ML_MAX_HORIZON here and on the "
                                       "workers for more"),
])
def test_an_option_the_workers_would_refuse_is_refused_before_any_run(
        argv: list[str], says: str, price_data: Path) -> None:
    args = parsed([*argv, "--data-dir", str(price_data)])
    with pytest.raises(ConfigError) as error:
        (send_request if argv[0] == "send-tasks" else backtest_request)(args)
    assert str(error.value) == says


@pytest.mark.parametrize("command", ["send-tasks", "backtest"])
def test_more_workers_than_the_machine_holds_are_refused(command: str, price_data: Path) -> None:
    # 100,000 forked workers until the machine stood still (load 388), then a traceback
    args = parsed([command, "--workers", "100000", "--data-dir", str(price_data)])
    with pytest.raises(ConfigError) as error:
        (send_request if command == "send-tasks" else backtest_request)(args)
    message = str(error.value)
    assert message.startswith("--workers 100000 is more than this machine holds: "), message
    assert "give at most" in message
    assert parsed([command, "--workers", "2"]).workers == 2 and workers_problem(2) is None


def test_enough_points_or_all_are_accepted(price_data: Path) -> None:
    for argv in (["--max-points", "20"], ["--max-points", "all"], ["--max-points", "5",
                                                                   "--levels", "none"]):
        args = parsed(["send-tasks", *argv, "--data-dir", str(price_data)])
        send_request(args)
    assert parsed(["send-tasks", "--max-points", "ALL"]).max_points == 0  # 0: the whole history


def test_max_points_zero_says_to_spell_all(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["send-tasks", "--max-points", "0"], capsys)
    assert code == 2 and len(lines(err)) == 1 and "give all for the whole history" in err


@pytest.mark.integration  # runs a command in a subprocess
def test_max_points_five_is_one_line_from_the_shell(price_data: Path) -> None:
    run = run_cli("send-tasks", "--max-points", "5", data_dir=price_data, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    [line] = lines(run.stderr)
    assert "--max-points 5 is too few" in line and "at least 20" in line
    assert "running embedded" not in run.stderr


def test_series_too_short_says_when_to_widen_the_window() -> None:
    window = str(SeriesTooShort.for_series("bitcoin", 5, 20, "linear", window=5))
    data = str(SeriesTooShort.for_series("bitcoin", 5, 20, "linear", window=200))
    unknown = str(SeriesTooShort.for_series("bitcoin", 5, 20, "linear"))
    assert "raise --max-points" in window and "add data" not in window
    assert "--max-points" not in data and "add data" in data
    assert "--max-points" in unknown and "add data" in unknown and "at least 20" in unknown


# --- 8. and 9. Ctrl-C ---------------------------------------------------------------------------

def run_family(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command_of(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


def assert_none_survive(family: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(family, timeout=20)
    survivors = [(p.pid, command_of(p)[:120]) for p in alive if p.is_running()]
    for proc in alive:  # leave the machine clean for the next test, then fail
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert survivors == []


@pytest.mark.integration  # starts a local cluster in a subprocess
@pytest.mark.parametrize(("sig", "code", "said"), [
    (signal.SIGINT, 130, ["crypto-ml: interrupted; local cluster stopped"]),
    (signal.SIGTERM, 0, []),  # a supervisor's stop (docker stop, a pod ending) is a clean one
    (signal.SIGHUP, 0, []),  # its terminal closed: as clean, where it was 129 with its folder
])
def test_ctrl_c_stops_cluster_up_with_exit_130(price_data: Path, sig: signal.Signals, code: int,
                                               said: list[str]) -> None:
    with hangups_heard():  # heard even where this run ignores it (nohup)
        proc = subprocess.Popen([sys.executable, "-m", "crypto_ml", "cluster", "up",
                                 "--workers", "1"], cwd=ROOT, env=cli_env(price_data),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, seen = proc.stdout.fileno(), bytearray()

    def ready() -> bool:
        assert proc.poll() is None, "cluster up ended before it was up"
        if select.select([out], [], [], 0)[0]:
            seen.extend(os.read(out, 65536))
        return b"press Ctrl-C to stop" in seen

    try:
        wait_until(ready, 120, "cluster up")
        family = run_family(proc.pid)
        assert any("crypto_ml.worker.launch" in command_of(p) for p in family)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert lines(err) == said, err
    assert_none_survive(family)


@pytest.mark.integration  # an embedded cluster training a network, in a subprocess
def test_a_second_ctrl_c_leaves_no_process_behind(price_data: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "crypto_ml", "send-tasks", "--model", "lstm",
                             "--epochs", "3", "--coins", "bitcoin", "--retrain"],
                            cwd=ROOT, env=cli_env(price_data), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def training() -> bool:
        """The workers are up and one of their pool processes is at work (its CPU time)."""
        assert proc.poll() is None, "the run ended before its workers were up"
        workers = [p for p in run_family(proc.pid)
                   if "crypto_ml.worker.launch" in command_of(p)]
        try:
            pools = [c for w in workers for c in w.children()]
            return any(p.cpu_times().user > 2.0 for p in pools)
        except psutil.NoSuchProcess:
            return False

    try:
        wait_until(training, 180, "a worker training the network")
        family = run_family(proc.pid)
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):  # 0.5 s later, while it stops:
            proc.wait(timeout=0.5)
        proc.send_signal(signal.SIGINT)  # again (a no-op should it have ended already)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert_none_survive(family)


def test_a_stop_signal_in_a_fork_is_raised_once_the_child_is_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # raised in the fork's hooks (logging's lock), it was printed as "Exception ignored in
    # <function _releaseLock> ... Traceback" on stderr, and lost
    from crypto_ml.cli.options import STOP_SIGNALS, stop_on_signals
    from crypto_ml.ops import processes

    real, forked = subprocess.Popen, []

    def popen(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, in the middle of the fork
        forked.append("on")  # the handler has run by now, and did not raise here
        return real(*args, **kwargs)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    monkeypatch.setattr(processes.subprocess, "Popen", popen)
    monkeypatch.setattr(processes, "_SPAWNED", [])  # this test's children alone
    try:
        stop_on_signals(None)
        with pytest.raises(KeyboardInterrupt):
            processes.spawn(["sleep", "60"], tmp_path / "sleep.log")
        assert forked == ["on"]
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        assert processes.kill_spawned() == 1  # the child was started, and is known


INTERRUPTED_COINS = ("bitcoin", "ethereum", "ripple", "litecoin", "dash", "monero")


@pytest.mark.integration  # an embedded cluster, networks training, in a subprocess
@pytest.mark.parametrize(("model", "stream", "seen"), [
    # 6 networks on 2 workers: when one is printed, 4 more are training
    ("lstm", "stdout", b"\n"),
    # as soon as the embedded cluster starts: while it starts or while best backtests
    ("best", "stderr", b"running embedded"),
])
def test_an_interrupted_run_writes_every_forecast_asked_to_its_output(
        price_data: Path, tmp_path: Path, model: str, stream: str, seen: bytes) -> None:
    out = tmp_path / "results.json"
    out.write_text("an earlier run's results\n")  # replaced, never left as it was
    models = ["--candidates", "naive,lstm"] if model == "best" else ["--retrain"]
    proc = subprocess.Popen([sys.executable, "-m", "crypto_ml", "send-tasks", "--model", model,
                             *models, "--epochs", "50", "--coins", ",".join(INTERRUPTED_COINS),
                             "--output", str(out), "--plot", str(tmp_path / "plot.png")],
                            cwd=ROOT, env=cli_env(price_data), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    watched, got = getattr(proc, stream), bytearray()

    def seen_there() -> bool:
        assert proc.poll() is None, f"the run ended before {seen!r} on its {stream}"
        if select.select([watched], [], [], 0)[0]:
            got.extend(os.read(watched.fileno(), 65536))
        return seen in got

    try:
        wait_until(seen_there, 180, f"{seen!r} on {stream}")
        proc.send_signal(signal.SIGINT)
        rest_out, rest_err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = (bytes(got) + rest_out if stream == "stdout" else rest_out).decode()
    err = (bytes(got) + rest_err if stream == "stderr" else rest_err).decode()
    assert proc.returncode == 130, err
    kept = json.loads(out.read_text())
    asked = {(c, model) for c in INTERRUPTED_COINS}
    arrived = {(c, m) for c, by_model in kept["results"].items() for m in by_model}
    failed = {(c, m): why for c, by_model in kept["failed"].items() for m, why in by_model.items()}
    assert {tuple(line.split()[:2]) for line in printed.splitlines()} <= arrived
    assert arrived | set(failed) == asked and not arrived & set(failed)  # each, once
    assert failed and all(why.startswith("interrupted before it arrived") for why in failed.values())
    assert f"wrote {out}: {len(arrived)} forecast(s) that arrived before the interrupt, " \
           f"{len(failed)} failed" in err, err
    # no picture of half a run, and said so (it was left out without a word)
    assert f"--plot {tmp_path / 'plot.png'} not drawn: the run was interrupted" in err, err
    assert not (tmp_path / "plot.png").exists()
    assert "Traceback" not in err, err


# --- 10. progress: forecasts on every stream, no control codes on a dumb terminal ------------

@pytest.mark.parametrize(("term", "bar"), [("xterm-256color", True), ("dumb", False),
                                           ("unknown", False)])
def test_a_dumb_terminal_is_no_terminal_for_a_bar(term: str, bar: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            monkeypatch.setenv("TERM", term)
            assert is_terminal(tty) is bar
            assert Progress(tty).tty is bar
        with open(os.devnull, "w") as not_a_tty:
            assert is_terminal(not_a_tty) is False
    finally:
        os.close(leader)
        os.close(follower)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result_of(coin: str, model: str) -> dict[str, Any]:
    return {"coin": coin, "model": model, "forecast": [1.0], "fit_seconds": 0.1, "worker": "w"}


def test_the_bar_counts_whole_messages_of_forecasts_never_a_batchs_first() -> None:
    """Two batch messages of 3 forecasts: the bar never shows 0/1 (a message's first forecast
    as if it were the run), and its ETA is the forecasts left at the forecasts' rate."""
    screen, clock, app = io.StringIO(), Clock(), object()  # the app: never polled here
    progress = Progress(screen, tty=True, clock=clock)
    for task, coins in (("m1", "abc"), ("m2", "def")):
        for coin in coins:
            clock.now += 0.3  # a slow broker: the bar is drawn while the run is sent
            progress.on_sent(app, task, coin, "linear")
    clock.now += 3.0
    for coin in "ab":
        progress.on_done("m1", coin, "linear", result_of(coin, "linear"), None)
    progress.polled_at = clock.now  # the backend is not asked: nothing runs
    progress.on_wait()
    bars = [bar.rstrip() for bar in re.findall(r"\r(\[[#-]+\] [^\r]*)", screen.getvalue())]
    totals = [int(total) for total in re.findall(r"\] \d+/(\d+) finished", screen.getvalue())]
    assert totals and set(totals) <= {3, 6} and totals[-1] == 6, bars
    # 2 forecasts in the 4.5 s since the first was sent: 4 left at 2/4.5 a second -> 9 s
    assert "2/6 finished: 2 done, 0 failed" in bars[-1] and bars[-1].endswith("ETA 0:09")


def test_every_stream_counts_forecasts_the_same_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="crypto_ml.progress")
    screen = io.StringIO()
    shown = {True: Progress(screen, tty=True, clock=Clock()),
             False: Progress(io.StringIO(), tty=False, clock=Clock())}
    for progress in shown.values():
        for task, coins in (("m1", "abcd"), ("m2", "efgh")):
            for coin in coins:
                progress.on_sent(None, task, coin, "naive")
        for coin in "abcdefgh":
            progress.on_done("m1" if coin < "e" else "m2", coin, "naive",
                             result_of(coin, "naive"), None)
            progress.on_wait()
    plain = [r.getMessage() for r in caplog.records if r.name == "crypto_ml.progress"]
    assert [line.split(":")[1].split()[0] for line in plain] == ["2/8", "4/8", "6/8", "8/8"]
    bars = re.findall(r"\] (\d+/\d+) finished", screen.getvalue())
    assert bars[0] == "0/8" and bars[-1] == "8/8" and all(b.endswith("/8") for b in bars)


@pytest.mark.integration  # a cluster and a command in a subprocess on a pseudo-terminal
def test_a_dumb_terminal_gets_plain_lines_in_forecasts(cluster: Any, price_data: Path) -> None:
    args = ["send-tasks", "--coins", COINS, "--model", "naive,linear", "--horizon", "2",
            "--broker", cluster.broker_url]
    forecasts = 2 * len(COINS.split(","))
    stdout, screen, rc = on_a_terminal(args, price_data, {"TERM": "dumb"})
    assert rc == 0 and len(lines(stdout)) == forecasts, screen
    assert "\x1b" not in screen and "\r\r" not in screen and "[#" not in screen, repr(screen)
    progress = [line for line in lines(screen) if line.startswith("progress: ")]
    assert progress and all(f"/{forecasts} finished" in line for line in progress), screen
    stdout, screen, rc = on_a_terminal(args, price_data, {"TERM": "xterm"})
    assert rc == 0 and "progress: " not in screen, screen
    bars = re.findall(r"\] (\d+)/(\d+) finished", screen)
    assert bars and all(int(total) == forecasts for _, total in bars), repr(screen)


# --- 11. help ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["send-tasks"], ["backtest"], ["data"], ["data", "download"],
                                     ["cluster"], ["cluster", "up"], ["queue-depth"], ["acl"]])
def test_every_subcommand_help_has_a_description_examples_and_exit_codes(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main([*command, "--help"], capsys)
    assert code == 0
    usage, description = out.split("\n\n")[:2]
    assert usage.startswith("usage:") and len(description.split()) >= 8, out
    examples = out.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert 2 <= len(examples) <= 3 and all(e.startswith("  ") for e in examples), out
    assert sum(f"crypto-ml {command[0]}" in e for e in examples) >= 2, out
    codes = out.split("exit codes:\n", 1)[1]
    assert "2 " in codes and ("0 " in codes or "130 " in codes), out


def test_data_download_verbose_help_does_not_promise_task_lines(
        capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["data", "download", "--help"], capsys)
    verbose = out.split("-v, --verbose", 1)[1].split("\n  -", 1)[0]
    assert "line per task" not in verbose and "info" in verbose


@pytest.mark.integration  # runs Flower's own help in a subprocess
@pytest.mark.parametrize("ask", ["-h", "--help=yes"])  # tornado's own help listed --port too
def test_flower_help_shows_flowers_own_options(ask: str) -> None:
    run = crypto_ml("flower", ask, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "examples:" in run.stdout and "exit codes:" in run.stdout
    for option in ("--max-tasks", "--purge-offline-workers", "--url-prefix"):
        assert option in run.stdout, run.stdout


# --- 12. ties of --model best ---------------------------------------------------------------

def best_of(mase: dict[str, float]) -> str:
    config = BacktestConfig(models=tuple(mase))
    result = BacktestResult(config, {"coin": {m: {"mase": v} for m, v in mase.items()}})
    return result.best()["coin"][0]


def test_scores_within_half_a_percent_tie_and_go_to_the_simpler_model() -> None:
    assert TIE_TOLERANCE == 0.005
    assert best_of({"naive": 1.004, "linear": 1.0}) == "naive"  # 0.4 % worse: a tie
    assert best_of({"naive": 1.006, "linear": 1.0}) == "linear"  # 0.6 % worse: not
    assert best_of({"arima": 2.0, "theta": 2.009, "ets": 2.02}) == "theta"
    assert best_of({"lstm": 0.5, "naive": 0.5}) == "naive"
    assert best_of({"naive": float("nan"), "linear": 3.0}) == "linear"
    assert best_of({"naive": float("inf"), "linear": float("inf")}) == "naive"


# --- 13. data download without a network ---------------------------------------------------

def test_no_network_fails_at_once_naming_host_and_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(variable, raising=False)
    slept: list[float] = []
    client = Client(base_url="https://min-api.example.invalid", sleep=slept.append)  # 4 retries
    with pytest.raises(DownloadError) as error:
        client.get("/data/top/mktcapfull", {"limit": 10})
    message = str(error.value)
    assert slept == []  # no retry, no backoff: a name that does not resolve stays so
    assert "min-api.example.invalid" in message and "HTTPS_PROXY" in message


def test_a_refused_connection_is_not_retried_and_names_the_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:secret@127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    slept: list[float] = []
    client = Client(base_url="https://min-api.cryptocompare.com", sleep=slept.append)
    with pytest.raises(DownloadError) as error:
        client.get("/data/top/mktcapfull", {"limit": 10})
    message = str(error.value)
    assert slept == [] and f"proxy 127.0.0.1:{port}" in message and "HTTPS_PROXY" in message
    assert "secret" not in message and "min-api.cryptocompare.com" in message


@pytest.mark.integration  # runs a command in a subprocess
def test_data_download_without_a_network_fails_within_seconds(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    run = crypto_ml("data", "download", "--api-url", f"http://127.0.0.1:{port}",
                    "--data-dir", str(tmp_path), timeout=120)  # the default --retries 4
    elapsed = time.monotonic() - started
    assert run.returncode == 2, run.stderr
    [line] = lines(run.stderr)
    assert f"cannot reach http://127.0.0.1:{port}" in line and "proxy" in line
    assert elapsed < 10  # about 1 s; retries would wait 2 + 4 + 8 + 16 s
