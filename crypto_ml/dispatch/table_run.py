"""Table runs: a long table of series in, a Parquet table of forecasts out, in bounded memory.

The series of a :class:`~crypto_ml.data.table.TableSource` go out in chunks (one
message per chunk, :mod:`crypto_ml.worker.chunks`) through the
:class:`~crypto_ml.dispatch.engine.Dispatcher`, at most ``in_flight`` at a time;
each chunk's forecasts are written the moment they arrive
(:class:`~crypto_ml.dispatch.table_output.TableOutput`) and then forgotten, so the
manager's memory and Redis's do not grow with the number of series. A rerun of the
same command skips the chunks already written. A chunk that fails as a whole for what
its series may cause (it ran past the time limit, its worker died as often as a message may
be delivered, a model raised: anything but :data:`NOT_THE_SERIES`) is sent again one series
a message once the others are in: a series that fails alone so goes to the failures table
with that reason (its rows NaN) and the rest are written, so one bad series costs only
itself. A chunk that fails for another reason (no result in time, a message the workers
refused) is not written: the run ends with exit code 1 and the same command retries just
those chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from celery import Celery, states

from crypto_ml.core.errors import InvalidTaskInput
from crypto_ml.data.steps import future_times
from crypto_ml.data.table import TIME_KINDS, SeriesChunk, TableSource, time_array
from crypto_ml.dispatch.engine import NO_RESULT, Dispatcher, InFlightLimit, Outcome, no_result
from crypto_ml.dispatch.planning import Message
from crypto_ml.dispatch.report import failure_reason
from crypto_ml.dispatch.table_output import FAILURES_SCHEMA, TableOutput, failed_series
from crypto_ml.models import model_class
from crypto_ml.models.intervals import level_key
from crypto_ml.worker.chunks import (
    TABLE_TASK_NAME,
    Chunk,
    ModelSpec,
    chunk_kwargs,
    column,
    failed_result,
    result_names,
)

#: How a chunk's failure reads when its series are not the cause: a message the workers
#: refused (every chunk fails alike), no result in time, revoked. A chunk that failed any
#: other way (a time limit, a worker killed as often as a message may go out, an error a
#: model raised) is sent again one series a message (see the module doc).
NOT_THE_SERIES = (InvalidTaskInput.__name__, NO_RESULT, "REVOKED")


def _splits(reason: str) -> bool:
    """Whether a chunk that failed for ``reason`` is sent again one series a message."""
    return not reason.startswith(NOT_THE_SERIES)


@dataclass(frozen=True)
class TablePlan:
    """What a table run computes, and how it is cut into messages."""

    models: tuple[ModelSpec, ...]
    horizon: int
    levels: tuple[float, ...]
    chunk_series: int
    #: the model that forecasts a series another fails on (statsforecast's fallback_model)
    fallback: ModelSpec | None = None

    @classmethod
    def of(cls, models: Sequence[str], horizon: int, levels: Sequence[float],
           max_points: int | None = None, params: dict[str, Any] | None = None,
           chunk_series: int | None = None, fallback: str | None = None) -> TablePlan:
        def spec(m: str) -> ModelSpec:
            return ModelSpec(m, {k: v for k, v in (params or {}).items()
                                 if k in model_class(m).options},
                             model_class(m).default_max_points if max_points is None
                             else max_points)

        size = chunk_series or min(model_class(m).series_per_message for m in models)
        return cls(tuple(spec(m) for m in models), horizon, tuple(levels), size,
                   None if fallback is None else spec(fallback))

    def describe(self, source: TableSource) -> dict[str, Any]:
        """What the output's manifest records (a rerun must match it)."""
        path = source.path
        where = ({"input": "a DataFrame", "input_size": None, "input_mtime": None}
                 if isinstance(path, pa.Table) else
                 {"input": str(path.resolve()), **source.fingerprint()})
        return {**where,
                "columns": [source.columns.id, source.columns.time, source.columns.value],
                "only": source.only,
                "models": [[m.model, m.params, m.max_points] for m in self.models],
                "horizon": self.horizon, "levels": list(self.levels),
                "chunk_series": self.chunk_series,
                **({} if self.fallback is None else {"fallback": [
                    self.fallback.model, self.fallback.params, self.fallback.max_points]})}

    def schema(self, time_kind: str, zone: str | None = None) -> pa.Schema:
        """The output's columns; timestamps keep the input's ``zone``."""
        ds_type = pa.timestamp("ns", tz=zone) if zone else TIME_KINDS[time_kind]
        fields = [("unique_id", pa.string()), ("ds", ds_type)]
        for m in self.models:
            fields.append((m.model, pa.float64()))
            for level in self.levels:
                key = level_key(level)
                fields += [(f"{m.model}-lo-{key}", pa.float64()), (f"{m.model}-hi-{key}", pa.float64())]
        return pa.schema(fields)


@dataclass
class TableSummary:
    series: int
    skipped: int = 0  # written by an earlier run of the same command
    done: int = 0
    failures: int = 0  # (series, model) pairs in the failures table, not filled
    filled: int = 0  # (series, model) pairs there that the fallback model forecast instead
    chunks_failed: dict[int, str] = field(default_factory=dict)
    already_complete: bool = False

    def retry_helps(self) -> bool:
        """Whether running again may bring the failed chunks back: not when each was refused
        as invalid (a horizon above the workers' cap, say), which fails the same way again."""
        return not all(reason.startswith(InvalidTaskInput.__name__)
                       for reason in self.chunks_failed.values())


#: Why a series whose next times pass the largest its time kind holds gets no forecast.
PAST_THE_LAST_TIME = ("TimeOutOfRange: its next times would pass the largest time its 'ds' "
                      "type holds (timestamps as int64 nanoseconds end in 2262, integers at "
                      "2**63 - 1); shift or rescale the times")


def chunk_table(plan: TablePlan, schema: pa.Schema, kind: str, chunk: SeriesChunk,
                result: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
    """A chunk's result as output rows, ``horizon`` for each series (NaN where a model
    failed; none for a series whose next times pass the last its kind holds), and failure
    rows."""
    h, n = plan.horizon, len(chunk.ids)
    zone = getattr(schema.field(1).type, "tz", None)
    times, beyond = future_times(kind, chunk.last_time, chunk.step, h, chunk.business, zone,
                                 chunk.anchor)
    errors = [e for e in result["errors"] if not beyond[e[0]]]
    errors += [(row, m.model, PAST_THE_LAST_TIME) for row in np.flatnonzero(beyond).tolist()
               for m in plan.models]
    keep = np.flatnonzero(~beyond)
    rows = np.repeat(keep, h)
    columns: list[Any] = [pa.array(chunk.ids, pa.string()).take(pa.array(rows)),
                          time_array(times[keep].reshape(-1), kind).cast(schema.field(1).type)]
    names = result_names(plan.levels)
    for m in plan.models:
        got = result["forecasts"][m.model]
        for name in names:
            columns.append(column(got[name]).reshape(n, h)[keep].reshape(-1))
    errors.sort(key=lambda e: e[0])
    failures = pa.table({"unique_id": [chunk.ids[row] for row, _, _ in errors],
                         "model": [model for _, model, _ in errors],
                         "error": [reason for _, _, reason in errors]},
                        schema=FAILURES_SCHEMA)
    return pa.Table.from_arrays(columns, schema=schema), failures


def _reason(outcome: Outcome, timeout: float | None) -> str | None:
    """Why a chunk failed as a whole, or None for a result."""
    if outcome.meta is None:
        return no_result(timeout)
    return None if outcome.meta["status"] == states.SUCCESS else failure_reason(outcome.meta)


def already_written(source: TableSource, output: TableOutput) -> TableSummary | None:
    """The summary of the run ``output`` already holds whole (nothing to compute), None when
    it holds none; OutputMismatch, naming what differs, when it holds another run."""
    if not output.finished():
        return None
    summary = TableSummary((source.info or source.check()).series, already_complete=True)
    summary.failures, summary.filled = output.failure_counts()
    return summary


def run_table(app: Celery, source: TableSource, output: TableOutput, plan: TablePlan,
              on_progress: Callable[[int, int], None] = lambda done, failed: None,
              say: Callable[[str], None] = print, on_wait: Callable[[], None] = lambda: None,
              timeout: float | None = 3600.0, in_flight: InFlightLimit = 8,
              on_skip: Callable[[int, int], None] | None = None,
              check_lost_every: float | None = None) -> TableSummary:
    """Forecast every series of ``source`` (checked) into ``output`` (see the module doc)."""
    info = source.info or source.check()
    summary = already_written(source, output) or TableSummary(info.series)
    if summary.already_complete:
        return summary
    done = output.done_chunks()
    run = _Run(Dispatcher(app, say, on_wait, check_lost_every), source, output, plan,
               plan.schema(info.time_kind, info.time_zone), info.time_kind, summary,
               on_progress, timeout, in_flight)
    total = 0
    try:
        total = run.chunks(done, on_skip or on_progress)
        if run.split:
            output.next_attempt()  # pass 1's run id is ended: a resume must not reuse it
            if not any(r.startswith(NO_RESULT) for r in summary.chunks_failed.values()):
                first = summary.chunks_failed[min(run.split)]
                say(f"{len(run.split)} chunk(s) failed as a whole ({first}); sending their "
                    "series one a message, so that only those at fault fail")
                run.one_by_one(Dispatcher(app, say, on_wait, check_lost_every))
            run.unresolved()
        if not summary.chunks_failed:
            summary.failures, summary.filled = output.finish(run.schema, range(total),
                                                             info.id_type)
    finally:
        output.next_attempt()  # unless it finished: then there is nothing to resume
    return summary


Piece = tuple[pa.Table, pa.Table]  # a series' (or a chunk's) output rows and failure rows


@dataclass
class _Run:
    """One table run's sending and writing (:func:`run_table`)."""

    engine: Dispatcher
    source: TableSource
    output: TableOutput
    plan: TablePlan
    schema: pa.Schema
    kind: str
    summary: TableSummary
    on_progress: Callable[[int, int], None]
    timeout: float | None
    in_flight: InFlightLimit
    #: chunks that failed as a whole for what their series may cause: their sizes
    split: dict[int, int] = field(default_factory=dict)

    def chunks(self, done: set[int], on_skip: Callable[[int, int], None]) -> int:
        """Send every chunk not in ``done``, write what comes back; the number of chunks."""
        chunks: dict[int, SeriesChunk] = {}
        total = 0

        def messages() -> Iterator[Message]:
            nonlocal total
            for chunk in self.source.chunks(self.plan.chunk_series):
                total = chunk.index + 1
                if chunk.index in done:
                    self.summary.skipped += len(chunk.ids)
                    on_skip(len(chunk.ids), self.output.failed_in(chunk.index))
                    continue
                chunks[chunk.index] = chunk
                yield self._message(chunk, chunk.index)

        outcomes = self.engine.run(messages(), self.timeout, max_in_flight=self.in_flight,
                                   run_id=self.output.run_id)
        try:
            for outcome in outcomes:
                assert outcome.message.key is not None  # every chunk message carries its number
                chunk = chunks.pop(outcome.message.key)
                piece = self._piece(outcome, chunk)
                if isinstance(piece, str):
                    self.summary.chunks_failed[chunk.index] = piece
                    if _splits(piece):  # counted once its series are back (one_by_one)
                        self.split[chunk.index] = len(chunk.ids)
                    else:
                        self.on_progress(0, len(chunk.ids))
                else:
                    self._write(chunk, [piece])
            self.engine.forget_earlier(done)  # late duplicates of what the interrupted runs read
        finally:
            outcomes.close()  # pending messages revoked, the run marked ended (engine doc)
        return self._never_sent(total, done, on_skip)

    def _never_sent(self, reached: int, done: set[int],
                    on_skip: Callable[[int, int], None]) -> int:
        """Account for the chunks from ``reached`` on, which the run gave up before sending
        (``--timeout`` with no result): failed, to retry, or written by an earlier run; the
        number of chunks."""
        per, series = self.plan.chunk_series, self.summary.series
        total = max(reached, -(-series // per))
        for index in range(reached, total):
            size = min(per, series - index * per)
            if index in done:
                self.summary.skipped += size
                on_skip(size, self.output.failed_in(index))
            else:
                self.summary.chunks_failed[index] = (
                    f"not sent: the run gave up, {no_result(self.timeout)}, on the chunks before")
                self.on_progress(0, size)
        return total

    def one_by_one(self, engine: Dispatcher) -> None:
        """Send the series of the chunks in :attr:`split` one a message through ``engine`` (a
        new one: the first pass's run has ended) and write each chunk once all its series are
        back; a series that fails alone as its chunk did is a
        failure row. A chunk that cannot be written (a series without a result in time)
        stays failed, counted as such."""
        per, split = self.plan.chunk_series, self.split
        singles: dict[int, tuple[SeriesChunk, list[SeriesChunk]]] = {}
        pieces: dict[int, dict[int, Piece | str]] = {}

        def messages() -> Iterator[Message]:
            for chunk in self.source.chunks(per):
                if chunk.index in split:
                    singles[chunk.index], pieces[chunk.index] = (chunk, _singles(chunk)), {}
                    for i, one in enumerate(singles[chunk.index][1]):
                        yield self._message(one, chunk.index * per + i)

        outcomes = engine.run(messages(), self.timeout, max_in_flight=self.in_flight)
        try:
            for outcome in outcomes:
                assert outcome.message.key is not None
                index, i = divmod(outcome.message.key, per)
                (chunk, ones), got = singles[index], pieces[index]
                got[i] = self._piece(outcome, ones[i])
                if len(got) == len(ones):
                    self._write_pieces(chunk, [got[j] for j in range(len(ones))])
                    del singles[index], pieces[index], split[index]
        finally:
            outcomes.close()

    def unresolved(self) -> None:
        """The chunks of :attr:`split` that are not written (the run gave up waiting for
        some of their series): failed for want of a result, counted so."""
        reason = no_result(self.timeout) if self.timeout is not None else NO_RESULT
        for index, size in self.split.items():
            self.summary.chunks_failed[index] = reason
            self.on_progress(0, size)
        self.split.clear()

    def _message(self, chunk: SeriesChunk, key: int) -> Message:
        kwargs = chunk_kwargs(self.plan.models, self.plan.horizon, self.plan.levels,
                              chunk.lengths, chunk.values, self.plan.fallback)
        return Message(TABLE_TASK_NAME, kwargs, [], serializer="msgpack", key=key,
                       payload=kwargs.pop("values"))

    def _piece(self, outcome: Outcome, chunk: SeriesChunk) -> Piece | str:
        """What came back for ``chunk``'s message: its rows and failures, or why it failed
        (a series alone, failing for what a series may cause, gets that reason as failure
        rows and NaN rows)."""
        reason = _reason(outcome, self.timeout)
        if reason is not None and _splits(reason) and len(chunk.ids) == 1:
            return self._failed(chunk, reason)
        if reason is not None:
            return reason
        assert outcome.meta is not None  # a timed-out message has a reason
        return chunk_table(self.plan, self.schema, self.kind, chunk, outcome.meta["result"])

    def _failed(self, one: SeriesChunk, reason: str) -> Piece:
        """A one-series chunk that failed for ``reason``: a failure per model, its rows NaN
        or the fallback model's forecast."""
        plan = self.plan
        chunk = Chunk(plan.models, plan.horizon, plan.levels, [one.values], plan.fallback)
        return chunk_table(plan, self.schema, self.kind, one, failed_result(chunk, reason))

    def _write_pieces(self, chunk: SeriesChunk, pieces: list[Piece | str]) -> None:
        lost = [p for p in pieces if isinstance(p, str)]
        if lost:  # not the series' doing (no result in time, say): the chunk stays, to retry
            self.summary.chunks_failed[chunk.index] = lost[0]
            self.on_progress(0, len(chunk.ids))
            return
        del self.summary.chunks_failed[chunk.index]
        self._write(chunk, [p for p in pieces if not isinstance(p, str)])

    def _write(self, chunk: SeriesChunk, pieces: list[Piece]) -> None:
        failures = pa.concat_tables([failed for _, failed in pieces])
        self.output.write_chunk(chunk.index, pa.concat_tables([rows for rows, _ in pieces]),
                                failures)
        self.summary.done += len(chunk.ids)
        self.on_progress(len(chunk.ids), len(failed_series(failures)))


def _singles(chunk: SeriesChunk) -> list[SeriesChunk]:
    """``chunk`` cut into chunks of one series each (views of its arrays)."""
    ends = np.cumsum(chunk.lengths)
    return [SeriesChunk(chunk.index, [uid], chunk.lengths[i:i + 1],
                        chunk.values[end - chunk.lengths[i]:end], chunk.last_time[i:i + 1],
                        chunk.step[i:i + 1],
                        None if chunk.times is None else chunk.times[end - chunk.lengths[i]:end],
                        None if chunk.business is None else chunk.business[i:i + 1])
            for i, (uid, end) in enumerate(zip(chunk.ids, ends.tolist(), strict=True))]
