"""What a run says while a Redis it needs is away (crypto_ml/dispatch/broker_errors.py ``Away``):
once when it goes, a reminder every so often, once when it is back; not a line a retry."""

from __future__ import annotations

import pytest
import redis

from crypto_ml.dispatch import broker_errors
from crypto_ml.dispatch.broker_errors import Away


def test_a_redis_away_is_said_once_then_reminded_then_said_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(broker_errors.time, "monotonic", lambda: now[0])
    said: list[str] = []
    away = Away(said.append, "the result backend", remind=30)
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
