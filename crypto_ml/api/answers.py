"""Answers already computed, given again to the same question: what repeated forecasts cost.

A cheap model's forecast is a function of its inputs alone: the closes, the model and its
options, the horizon and the levels. Applications ask the same question again and again (a
dashboard polls the bitcoin forecast; a fleet of clients asks for the same coins), and the
data changes once a day. :class:`Answers` keeps the answer of each finished run whose
forecasts all succeeded, keyed by a digest of those inputs (the closes by their bytes: a
changed data file, or another series, is another key, so no answer outlives its data), for
``CRYPTO_ML_API_ANSWER_SECONDS`` (300; 0: off), at most :data:`MOST` bytes in an API process,
the least recently used and the expired dropped first.

A question asked while the same one is being answered for another request (a burst of
clients after the daily data update) waits for that answer, within its own ``wait``, instead of
being fitted again (:meth:`Answers.asking`).

A request answered from here gets a run id of its own, kept in the result backend like any
other run's (:meth:`~crypto_ml.dispatch.runs.RunQueue.keep`), so its id can be read until it
expires. Never kept: a run with a deep model (the model store answers those, and ``retrain``
asks for a new fit), a run with a failure (a lost worker is no answer to repeat), a large run
(:data:`MOST_FORECASTS`, :data:`MOST_CLOSES`, :data:`LARGEST`). The key holds the inputs, not
the model's code: after a rollout, the old code's answers are given until they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from crypto_ml.dispatch.runs import RunState
from crypto_ml.models import HEAVY
from crypto_ml.worker.requests import ForecastRequest

#: Bytes of answers kept at the most (a one-coin answer is about a kilobyte of JSON).
MOST = 32_000_000
#: What keeping one answer costs beside its JSON (its key, entry and expiry), in bytes.
ENTRY = 300
#: Answers larger than this (bytes of JSON) are not kept.
LARGEST = 64_000
#: Runs of more forecasts, or more closes in all, are not keyed (hashing them would hold the
#: event loop for milliseconds, and their answers are larger than LARGEST).
MOST_FORECASTS = 50
MOST_CLOSES = 50_000


def question(requests: Sequence[ForecastRequest]) -> bytes | None:
    """The digest of everything ``requests``' forecasts depend on; None when they are not all
    functions of it (a deep model, ``retrain``) or too many to keep."""
    if len(requests) > MOST_FORECASTS or sum(len(r.prices) for r in requests) > MOST_CLOSES:
        return None
    digest = hashlib.blake2b(digest_size=20)
    for r in requests:
        if r.model in HEAVY or r.retrain:
            return None
        # each request's fields as a JSON list (no list is the start of another), then its
        # closes, whose count the list holds: one stream of bytes is one list of requests
        digest.update(json.dumps([r.coin, r.model, r.horizon, r.last_date, list(r.levels),
                                  r.params, len(r.prices)], sort_keys=True).encode())
        digest.update(array("d", r.prices).tobytes())
    return digest.digest()


@dataclass(frozen=True)
class Kept:
    """A finished run's answer (:meth:`~crypto_ml.dispatch.runs.RunState.encoded`), its id
    and until when it may be given again."""

    run_id: str
    answer: bytes
    until: float


@dataclass
class Asking:
    """A request's part in answering its question (:meth:`Answers.asking`): the seconds left of
    its wait, the answer made for another request that asked it at the same time, and where
    this request's own answer goes for the requests that wait for it."""

    left: float
    shared: RunState | None = None
    _answer: asyncio.Future[RunState | None] | None = None

    def answered(self, state: RunState) -> None:
        """``state`` answers the question, for the requests waiting for it too."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(state)


class Answers:
    """Finished runs' answers by :func:`question`, each kept ``seconds``."""

    def __init__(self, seconds: float, most: int = MOST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.most, self.clock = seconds, most, clock
        self._kept: OrderedDict[bytes, Kept] = OrderedDict()  # least recently used first
        self.size = 0  # bytes of the answers kept, with ENTRY each
        self._asked: dict[bytes, asyncio.Future[RunState | None]] = {}  # being answered now
        self.awaiting = 0  # requests waiting for one of them

    def key(self, requests: Sequence[ForecastRequest]) -> bytes | None:
        """The key of ``requests``' answer; None: not kept (off, or not a function of it)."""
        return question(requests) if self.seconds > 0 else None

    def get(self, key: bytes | None) -> Kept | None:
        """The kept answer of ``key``, if it has not expired."""
        if key is None or (kept := self._kept.get(key)) is None:
            return None
        if self.clock() >= kept.until:
            self._drop(key)
            return None
        self._kept.move_to_end(key)
        return kept

    @contextlib.asynccontextmanager
    async def asking(self, key: bytes | None, wait: float) -> AsyncIterator[Asking]:
        """Around answering ``key`` within ``wait`` seconds. If the same question is being
        answered for another request, wait for that answer first: :attr:`Asking.shared` (None
        if it did not come within either wait). Else this request answers it
        (:meth:`Asking.answered`), and others asked meanwhile wait for it."""
        if key is None or wait <= 0:
            yield Asking(wait)
            return
        if (other := self._asked.get(key)) is not None:
            started = time.monotonic()
            self.awaiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(other), wait)
            finally:
                self.awaiting -= 1
            shared = other.result() if other.done() else None
            yield Asking(max(0.0, wait - (time.monotonic() - started)), shared)
            return
        self._asked[key] = answer = asyncio.get_running_loop().create_future()
        try:
            yield Asking(wait, None, answer)
        finally:
            del self._asked[key]
            if not answer.done():
                answer.set_result(None)  # no answer: each waiting request goes on by itself

    def put(self, key: bytes | None, state: RunState) -> None:
        """Keep ``state``'s answer under ``key`` if every forecast of it succeeded."""
        if key is None or state.status != "done" or state.failed:
            return
        if len(state.encoded()) > LARGEST:
            return
        self._drop(key)
        now = self.clock()
        self._kept[key] = Kept(state.id, state.encoded(), now + self.seconds)
        self.size += len(state.encoded()) + ENTRY
        while self._kept and (self.size > self.most
                              or next(iter(self._kept.values())).until <= now):
            self._drop(next(iter(self._kept)))  # beyond the bound, or expired

    def _drop(self, key: bytes) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self.size -= len(kept.answer) + ENTRY
