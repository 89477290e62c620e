"""Answers already computed, given again to the same question: what repeated forecasts cost.

A cheap model's forecast is a function of its inputs alone: the closes, the model and its
options, the horizon and the levels. Applications ask the same question again and again (a
dashboard polls the bitcoin forecast; a fleet of clients asks for the same coins), and the
data changes once a day. :class:`Answers` keeps the answer of each finished run whose
forecasts all succeeded, keyed by a digest of those inputs (the closes by their bytes: a
changed data file, or another series, is another key, so no answer outlives its data), for
``CRYPTO_ML_API_ANSWER_SECONDS`` (300; 0: off), at most :data:`MOST` bytes of answers (about
30,000 one-coin answers) in an API process, the least recently used dropped first.

A request answered from here gets a run id of its own, kept in the result backend like any
other run's (:meth:`~crypto_ml.dispatch.runs.RunQueue.keep`), so its id can be read until it
expires. Never kept: a run with a deep model (the model store answers those, and ``retrain``
asks for a new fit), a run with a failure (a lost worker is no answer to repeat), an answer
over :data:`LARGEST` bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence

from crypto_ml.dispatch.runs import RunState
from crypto_ml.models import HEAVY
from crypto_ml.worker.requests import ForecastRequest

#: Bytes of answers (their JSON) kept at the most (a one-coin answer is about a kilobyte).
MOST = 32_000_000
#: Answers larger than this (bytes of JSON) are not kept.
LARGEST = 64_000


def question(requests: Sequence[ForecastRequest]) -> bytes | None:
    """The digest of everything ``requests``' forecasts depend on; None when they are not all
    functions of it (a deep model, ``retrain``)."""
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


class Answers:
    """Finished runs' answers by :func:`question`, each kept ``seconds``."""

    def __init__(self, seconds: float, most: int = MOST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.most, self.clock = seconds, most, clock
        self._kept: OrderedDict[bytes, tuple[float, RunState]] = OrderedDict()
        self.size = 0  # bytes of the answers kept

    def key(self, requests: Sequence[ForecastRequest]) -> bytes | None:
        """The key of ``requests``' answer; None: not kept (off, or not a function of it)."""
        return question(requests) if self.seconds > 0 else None

    def get(self, key: bytes | None) -> RunState | None:
        """The kept answer of ``key``, if it has not expired."""
        if key is None or (kept := self._kept.get(key)) is None:
            return None
        until, state = kept
        if self.clock() >= until:
            self._drop(key)
            return None
        self._kept.move_to_end(key)
        return state

    def put(self, key: bytes | None, state: RunState) -> None:
        """Keep ``state`` under ``key`` if every forecast of it succeeded."""
        if key is None or state.status != "done" or state.failed:
            return
        if len(state.encoded()) > LARGEST:
            return
        self._drop(key)
        self._kept[key] = (self.clock() + self.seconds, state)
        self.size += len(state.encoded())
        while self.size > self.most:
            self._drop(next(iter(self._kept)))

    def _drop(self, key: bytes) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self.size -= len(kept[1].encoded())
