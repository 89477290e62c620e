"""The argument checks of ``send-tasks`` and ``backtest``, fuzzed: whatever the command line,
checking it ends in a request, argparse's usage error or one of the project's errors (one
line, exit 2), never another exception (a traceback for the user).

Arguments are drawn from each option's awkward values (empty, blank, zero, negative, NaN,
huge, any case, paths that are folders, devices or in no folder) and from arbitrary text.
Nothing runs: only the checks that come before any cluster starts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto_ml.cli import build_parser
from crypto_ml.cli.requests import backtest_request, send_request
from crypto_ml.core.errors import CryptoMLError

NUMBERS = ["0", "-1", "1", "3", "7", "200", "nan", "inf", "1e400", "2.5", "99999999999999999999",
           " 5", "all", "none", ""]
MODELS = ["naive", "linear", "NAIVE", "lstm", "gru", "best", "naive,linear", "naive,,linear",
          ",", "prophet", "naive,naive", "lstm_ret", "ets,theta,arima", ""]
COINS = ["bitcoin", "BITCOIN", "bitcoin,ethereum", "bitcoin,bitcoin", ",", " ", "nocoin",
         "bitcoin,nocoin", "../bitcoin", ""]
LEVELS = ["80,95", "none", "", "0", "100", "50,50", "99.9", "-5", "nan", "80,"]
FORMATS = ["text", "json-lines", "xml", ""]
#: {tmp} is the test's folder: it holds a file (file.json), a folder (sub) and a table
PATHS = ["", " ", "{tmp}", "{tmp}/out.json", "{tmp}/file.json", "{tmp}/sub", "{tmp}/no/x.json",
         "{tmp}/t.csv", "/dev/null", "/proc/self/nothing", "{tmp}/out.parquet", "x" * 300]

SEND = {"--model": MODELS, "--coins": COINS, "--horizon": NUMBERS, "--max-points": NUMBERS,
        "--levels": LEVELS, "--epochs": NUMBERS, "--format": FORMATS, "--output": PATHS,
        "--plot": PATHS, "--backtest": PATHS, "--candidates": MODELS, "--input": PATHS,
        "--id-col": ["id", ""], "--in-flight": NUMBERS, "--fallback-model": MODELS,
        "--data-dir": PATHS, "--workers": NUMBERS, "--timeout": NUMBERS,
        "--retrain": None, "--overwrite": None, "-q": None, "--flower": None}
BACKTEST = {"--model": MODELS, "--coins": COINS, "--horizon": NUMBERS, "--origins": NUMBERS,
            "--stride": NUMBERS, "--min-train": NUMBERS, "--until": ["2017-08-01", "", "x"],
            "--max-points": [*NUMBERS, "3,all", "all,all", ","], "--levels": LEVELS,
            "--epochs": NUMBERS, "--seed": NUMBERS, "--out": PATHS, "--input": PATHS,
            "--data-dir": PATHS, "--workers": NUMBERS, "-q": None}


def argv_of(options: dict[str, list[str] | None]) -> st.SearchStrategy[list[str]]:
    """Up to five of ``options``, each with one of its values or any short text."""
    def one(name: str) -> st.SearchStrategy[list[str]]:
        values = options[name]
        if values is None:
            return st.just([name])
        listed = st.sampled_from(values)  # three in four: the awkward values reach the checks
        return st.one_of(listed, listed, listed, st.text(max_size=12)).map(
            lambda value: [name, value])

    chosen = st.lists(st.sampled_from(sorted(options)), max_size=5, unique=True)
    return chosen.flatmap(lambda names: st.tuples(*(one(n) for n in names))).map(
        lambda parts: [word for part in parts for word in part])


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "file.json").write_text("{}")
    (tmp / "sub").mkdir()
    (tmp / "t.csv").write_text("unique_id,ds,y\na,2017-01-01,1\n")
    return tmp


@contextlib.contextmanager
def environment(data: Path) -> Iterator[None]:
    """The data folder of the tests, no broker: what a user with a fresh shell has."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("CRYPTO_ML_")]:
        del os.environ[name]
    os.environ["CRYPTO_ML_DATA_DIR"] = str(data)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def check(command: str, words: list[str], place: Path, data: Path) -> None:
    argv = [command] + [w.replace("{tmp}", str(place)) for w in words]
    parser = build_parser("crypto-ml", command)
    with environment(data), contextlib.redirect_stderr(io.StringIO()):
        try:
            args: argparse.Namespace = parser.parse_args(argv)
        except SystemExit as exit:
            assert exit.code == 2, argv
            return
        with contextlib.suppress(CryptoMLError):
            (send_request if command == "send-tasks" else backtest_request)(args)


FUZZ = settings(max_examples=400, deadline=None, derandomize=True,  # the same cases each run
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(words=argv_of(SEND))
def test_send_tasks_arguments_end_in_a_request_or_one_clear_error(
        words: list[str], place: Path, price_data: Path) -> None:
    check("send-tasks", words, place, price_data)


@FUZZ
@given(words=argv_of(BACKTEST))
def test_backtest_arguments_end_in_a_request_or_one_clear_error(
        words: list[str], place: Path, price_data: Path) -> None:
    check("backtest", words, place, price_data)
