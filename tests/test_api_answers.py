"""A question asked again gets the answer already computed (crypto_ml.api.answers): the same
forecasts under a run id of its own, never an answer of other closes, options or models, never
a failure or a deep model's, and none after CRYPTO_ML_API_ANSWER_SECONDS. The same on the real
cluster is in tests/test_api_cluster.py."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from api_support import client, write_coins

from crypto_ml.api.answers import ENTRY, MOST_FORECASTS, Answers, question
from crypto_ml.api.app import create_app
from crypto_ml.api.service import InProcessRuns
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.runs import RunState, renamed
from crypto_ml.worker.requests import ForecastRequest

SERIES = [1.0, 2.0, 3.0, 5.0, 4.0, 6.0]
BODY = {"series": {"mine": SERIES}, "model": "linear", "horizon": 3}


def make(tmp_path: Path, **settings: Any) -> Any:
    data = write_coins(tmp_path / "prices")
    return client(create_app(Settings(data_dir=data, **settings), InProcessRuns()))


def counted(api: Any, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", api.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def without_id(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "id"}


def test_the_same_question_gets_the_same_answer_under_an_id_of_its_own(tmp_path: Path) -> None:
    api = make(tmp_path)
    first = api.post("/v1/forecasts", json=BODY)
    again = api.post("/v1/forecasts?wait=1", json=BODY)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["id"] != first.json()["id"]
    assert without_id(again.json()) == without_id(first.json())
    for answer in (first.json(), again.json()):  # each id reads its answer
        assert api.get(f"/v1/forecasts/{answer['id']}").json() == answer
    assert counted(api, "crypto_ml_api_answers_reused_total") == 1
    assert counted(api, 'crypto_ml_api_forecasts_total{model="linear",status="ok"}') == 1


@pytest.mark.parametrize("change", [
    {"series": {"mine": [*SERIES[:-1], 7.0]}},  # other closes (a data file that changed)
    {"series": {"yours": SERIES}},
    {"horizon": 4},
    {"levels": [90]},
    {"model": "naive"},
    {"max_points": 3, "levels": []},  # a window under 20 calibrates no intervals
])
def test_another_question_is_forecast_afresh(tmp_path: Path, change: dict[str, Any]) -> None:
    api = make(tmp_path)
    api.post("/v1/forecasts", json=BODY)
    other = api.post("/v1/forecasts", json={**BODY, **change})
    assert other.status_code == 200, other.text
    assert counted(api, "crypto_ml_api_answers_reused_total") == 0


def test_answers_off_forecasts_every_request(tmp_path: Path) -> None:
    api = make(tmp_path, api_answer_seconds=0)
    for _ in range(2):
        assert api.post("/v1/forecasts", json=BODY).status_code == 200
    assert counted(api, "crypto_ml_api_answers_reused_total") == 0
    assert counted(api, 'crypto_ml_api_forecasts_total{model="linear",status="ok"}') == 2


def request(**fields: Any) -> ForecastRequest:
    return ForecastRequest(**{"coin": "mine", "model": "linear", "prices": SERIES,
                              "horizon": 3, **fields})


def test_deep_models_retrains_and_large_runs_are_never_keyed() -> None:
    assert question([request()]) is not None
    assert question([request(), request(model="lstm")]) is None
    assert question([request(retrain=True)]) is None
    assert question([request(coin=str(i)) for i in range(MOST_FORECASTS + 1)]) is None
    assert question([request(params={"a": 1})]) != question([request(params={"a": 2})])


def test_an_answer_expires_makes_room_and_is_never_a_failure() -> None:
    now = [0.0]
    done = RunState("run", "done", {"mine": {"linear": {"forecast": [1.0]}}})
    room = len(done.encoded()) + ENTRY
    answers = Answers(seconds=10, most=2 * room, clock=lambda: now[0])
    answers.put(b"a", done)
    answers.put(b"f", RunState("f", "done", {"x": {}}, {"y": {"linear": "lost"}}))
    answers.put(b"g", RunState("g", "failed", {}, {"y": {"linear": "lost"}}))
    assert answers.get(b"f") is None and answers.get(b"g") is None
    kept = answers.get(b"a")
    assert kept is not None and kept.answer == done.encoded() and kept.run_id == "run"
    answers.put(b"b", done)
    answers.put(b"c", done)  # room for two: the least recently used (a) goes
    assert answers.get(b"a") is None and answers.get(b"b") is not None
    assert answers.size == 2 * room
    now[0] = 10.0
    answers.put(b"d", done)  # the expired answers go when another is kept
    assert answers.size == room
    assert answers.get(b"b") is None and answers.get(b"c") is None
    assert answers.get(None) is None and Answers(seconds=0).key([request()]) is None


def test_a_renamed_answer_is_the_same_json_under_its_new_id() -> None:
    state = RunState("old", "done", {"mine": {"linear": {"forecast": [1.5, 2.0]}}})
    assert renamed(state.encoded(), "old", "new") == RunState("new", "done",
                                                              state.results).encoded()


def test_a_question_being_answered_is_waited_for_within_the_wait() -> None:
    failed = RunState("run", "done", {"a": {"linear": {"forecast": [1.0]}}},
                      {"b": {"linear": "SeriesTooShort: ..."}})  # never kept: shared all the same
    seen: list[tuple[str, RunState | None, float]] = []

    async def asked(answers: Answers, name: str, wait: float, answer: bool) -> None:
        async with answers.asking(b"k", wait) as asking:
            if answer:  # the first asker: answers once the other waits (or is done)
                while (answers.awaiting == 0 or slow) and not seen:
                    await asyncio.sleep(0.001)
                if broken:
                    raise RuntimeError("the first asker's run failed as a whole")
                answers.put(b"k", failed)
                asking.answered(failed)
            seen.append((name, asking.shared, asking.left))

    async def scenario(follower_wait: float) -> None:
        answers = Answers(seconds=10)
        first = asyncio.ensure_future(asked(answers, "first", 5, answer=True))
        await asyncio.sleep(0)  # the first asks before the second
        await asked(answers, "second", follower_wait, answer=False)
        await asyncio.gather(first, return_exceptions=True)
        assert answers.awaiting == 0 and not answers._asked and answers.get(b"k") is None

    slow = broken = False
    asyncio.run(scenario(5))  # the second waits for the first's answer, then has it
    assert [(n, s) for n, s, _ in seen] == [("first", None), ("second", failed)]
    assert 0 < seen[1][2] <= 5
    for slow, broken, wait in ((False, False, 0), (True, False, 0.05), (False, True, 5)):  # noqa: B007 - read by asked()
        seen.clear()  # no wait; a wait that runs out first; a first asker that fails: alone
        asyncio.run(scenario(wait))
        assert seen[0][:2] == ("second", None) and (seen[0][2] == 0) == (not broken)
