"""What a run says while a Redis it needs is away (crypto_ml/dispatch/broker_errors.py ``Away``):
once when it goes, a reminder every so often, once when it is back; not a line a retry. Also
the edges of a run that no user sees until they fail: signals under nohup, the sweep of dead
runs' folders, a Python caller's coins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from crypto_ml.dispatch import broker_errors
from crypto_ml.dispatch.broker_errors import Away
from crypto_ml.dispatch.cluster import sweep_workdirs


def test_a_redis_away_is_said_once_then_reminded_then_said_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(broker_errors.time, "monotonic", lambda: now[0])
    said: list[str] = []
    away = Away(said.append, "the result backend", "the run gives up at --timeout", remind=30)
    away.back()  # never lost: nothing to say
    for _ in range(29):  # a retry a second, as the engine makes them
        away.lost(redis.ConnectionError("refused"))
        now[0] += 1
    assert said == ["lost the result backend (ConnectionError); waiting for it to come back"]
    now[0] += 1
    away.lost(redis.ConnectionError("refused"))
    assert said[1:] == ["still waiting for the result backend: away 30 s (ConnectionError); "
                        "the run gives up at --timeout"]
    now[0] += 4
    away.back()
    away.back()
    assert said[2:] == ["the result backend is back after 34 s"]
    away.lost(redis.TimeoutError("slow"))  # away again: said again
    assert said[3:] == ["lost the result backend (TimeoutError); waiting for it to come back"]


def test_a_command_started_under_nohup_keeps_ignoring_sighup() -> None:
    from crypto_ml.cli.options import stop_on

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    term = signal.getsignal(signal.SIGTERM)
    try:
        stop_on(lambda signum, frame: None)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not term
    finally:
        signal.signal(signal.SIGHUP, before)
        signal.signal(signal.SIGTERM, term)


def test_the_sweep_deletes_dead_owners_folders_only(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = {name: tmp_path / name for name in (
        f"crypto-ml-{dead.pid}-abcdefgh",  # its owner is gone
        f"crypto-ml-{os.getpid()}-abcdefgh",  # this process's own
        "crypto-ml-99999999999999999999-aaaaaaaa",  # no pid at all (os.kill overflows)
        f"crypto-ml-{dead.pid}-not-ours")}  # another name
    for folder in folders.values():
        folder.mkdir()
    assert sweep_workdirs(tmp_path) == [folders[f"crypto-ml-{dead.pid}-abcdefgh"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name for name in folders if name != f"crypto-ml-{dead.pid}-abcdefgh")


def test_a_python_callers_coins_may_be_any_collection_of_names() -> None:
    import numpy as np
    import pandas as pd

    from crypto_ml.dispatch.manager import checked_call

    for coins in (np.array(["bitcoin", "dash"]), pd.Index(["bitcoin", "dash"]),
                  {"bitcoin": 1, "dash": 2}.keys(), ("bitcoin", "dash")):
        assert checked_call(coins, 60.0) == ["bitcoin", "dash"]  # type: ignore[arg-type]
