"""A table run's output: Parquet in statsforecast's ``forecast()`` layout, resumable.

While a run goes on, each finished chunk is one Arrow IPC file in a parts folder
beside the output (``.OUT.parquet.parts/``; Arrow's own format writes and reads at
memory speed, and a part lives only until the run ends), written to a temporary name
and renamed, so a chunk is either wholly there or not at all; its failures go to a
file of their own, renamed first. ``manifest.json`` there records what the run
is (input, models, horizon, levels, chunking). A run that finds the parts folder
of the same run takes the chunks it holds as done and sends only the others;
one of a different run is an :class:`~crypto_ml.core.errors.OutputMismatch`
naming the difference (``--overwrite`` starts afresh). ``run-id`` there names the run to
the dispatch engine: a run resumed after its manager was killed keeps it, so its chunk
messages carry the ids the killed run gave them, and what that run's workers still compute
is taken, not redone. A run that stops before finishing in any other way (interrupted,
cancelled, some chunk failed) revokes its pending messages and tells the workers it has
ended, so it leaves a new id (:meth:`TableOutput.next_attempt`) for the run that resumes it.
When every chunk is in, :meth:`TableOutput.finish` copies the parts, in chunk order, into ``OUT`` and
``OUT.failures.parquet`` (each written aside and renamed: atomic) and removes the
folder, so an interrupted and an uninterrupted run give the same files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crypto_ml.core.errors import ConfigError, OutputMismatch, OutputUnwritable
from crypto_ml.worker.chunks import FILLED

FAILURES_SCHEMA = pa.schema([("unique_id", pa.string()), ("model", pa.string()),
                             ("error", pa.string())])
MANIFEST = "manifest.json"
RUN_ID = "run-id"
PART = ".arrow"  # a finished chunk's file: Arrow IPC
META_KEY = b"crypto_ml.run"
log = logging.getLogger(__name__)


def _filled(errors: pa.ChunkedArray) -> pa.ChunkedArray:
    """Which failure rows a fallback model filled (their error begins :data:`FILLED`)."""
    return pc.starts_with(errors, FILLED)


def first_failures(out: Path, n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` failures (id, model, error) in a finished run's failures table, those a
    fallback model filled left out; read batch by batch (a run may fail millions)."""
    shown: list[tuple[str, str, str]] = []
    with (contextlib.suppress(OSError, pa.ArrowException),  # the file names them all anyway
          pq.ParquetFile(failures_path(out)) as failures):
        for batch in failures.iter_batches(batch_size=1024):
            rows = pa.Table.from_batches([batch])
            rows = rows.filter(pc.invert(_filled(rows.column("error"))))
            shown += zip(*(rows.column(c).to_pylist() for c in FAILURES_SCHEMA.names),
                         strict=True)
            if len(shown) >= n:
                break
    return shown[:n]


def failed_series(failures: pa.Table) -> set[str]:
    """The ids in failure rows that no fallback model filled."""
    filled = _filled(failures.column("error"))
    return set(failures.column("unique_id").filter(pc.invert(filled)).to_pylist())


def failures_path(out: Path) -> Path:
    """``OUT.failures.parquet`` beside ``OUT.parquet``."""
    return out.with_name(out.name.removesuffix(".parquet") + ".failures.parquet")


@contextlib.contextmanager
def held(out: Path, name: str = "--output") -> Iterator[None]:
    """OUT for this run alone, while it lasts (``flock`` on ``.OUT.lock`` beside it, which
    stays): a second run to the same OUT (cron twice, two terminals, a send-tasks run to an
    HTTP job's file) gets a ConfigError at once, instead of computing the same chunks and
    joining them over the first's file. ``name``: how the error names OUT. A file system
    that takes no locks (NFS without lockd, some FUSE mounts) runs unlocked, with a warning."""
    lock = out.with_name(f".{out.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"{name} {out}: cannot open its lock file {lock.name} "
                          f"({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{name} {out}: another run is writing it now; wait for it "
                              f"to end, or choose another {name}") from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: no locks on this file system
            log.warning("%s %s: runs unlocked, its file system takes no lock (%s)", name, out,
                        exc.strerror or exc)
        yield
    finally:
        os.close(fd)


def check_apart(out: Path, source: object) -> None:
    """A ConfigError when OUT or its failures file is the input table (``--overwrite`` would
    delete it) or lies in the input folder (the next run would read the forecasts as
    series); ``source`` is the manifest's ``input``."""
    if not isinstance(source, str) or not Path(source).is_absolute():
        return  # a DataFrame
    table = Path(source)
    for path in (out, failures_path(out)):
        where = path.resolve()
        if where.is_relative_to(table):
            how = "is" if where == table else "lies in"
            raise ConfigError(f"--output {out}: {path.name} {how} the --input table {table}; "
                              "write the forecasts elsewhere")


def _differing(had: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """The keys either run description holds whose values differ."""
    return [k for k in dict.fromkeys([*want, *had]) if had.get(k) != want.get(k)]


#: A run description's keys as the command line names them (:func:`_differences`).
RUN_OPTIONS = {"input": "--input", "columns": "--id-col, --time-col, --value-col",
               "only": "--coins", "models": "--model", "horizon": "--horizon",
               "levels": "--levels", "fallback": "--fallback-model",
               "chunk_series": "--chunk-series"}


def _said(key: str, value: Any) -> str:
    """A run description's value as the command line gives it: models as ``name`` (and their
    options and closes), lists joined by commas, none as ``none``."""
    if value is None:
        return "none"
    if key in ("models", "fallback"):
        picked = value if key == "models" else [value]
        return ",".join(f"{name}{f' {params}' if params else ''} ({points or 'all'} closes)"
                        for name, params, points in picked)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def _differences(had: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    """What differs, as options: ``--model was arima (200 closes), now theta (200 closes)``;
    the input's size, time or files as ``the input's contents``."""
    keys = _differing(had, want)
    said = [f"{RUN_OPTIONS.get(k, k)} was {_said(k, had.get(k))}, now {_said(k, want.get(k))}"
            for k in keys if not k.startswith("input_")]
    if any(k.startswith("input_") for k in keys):
        said.append("the input's contents changed")
    return "; ".join(said)


#: A run description's keys as a job's body names them (:func:`run_differences`).
RUN_WORDS = {"input": "input path", "models": "model (or its max_points)",
             "fallback": "fallback_model", "columns": "id_col, time_col or value_col"}


def run_differences(had: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """What differs between two runs' descriptions, in words that show no server path and
    name a job body's fields (:data:`RUN_WORDS`; ``input contents`` for the input's size, time
    or files; not the chunk size, which follows the models)."""
    def word(key: str) -> str:
        if key.startswith("input_"):
            return "input contents"
        return RUN_WORDS.get(key, key)

    return list(dict.fromkeys(word(k) for k in _differing(had, want)
                              if k != "chunk_series"))  # follows the models


def _text_columns(schema: pa.Schema) -> list[str]:
    """The columns worth a dictionary: ids and reasons repeat, forecasts hardly ever (trying
    a dictionary on them costs more than writing the values)."""
    return [f.name for f in schema if pa.types.is_string(f.type)]


def _aside(path: Path, hidden: str = "") -> Path:
    """A name of this writer's own to write ``path`` under before renaming it: a process
    paused mid-write (an API job resumed elsewhere meanwhile, a second run to the same OUT)
    cannot finish into another's."""
    return path.with_name(f"{hidden}{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextlib.contextmanager
def _writing(path: Path, tmp: Path) -> Iterator[None]:
    """An OSError while ``tmp`` is written and renamed to ``path`` as one OutputUnwritable
    naming ``path`` (what the disk said); ``tmp`` removed, whatever stopped the writing (a
    Ctrl-C too: no run sweeps it later)."""
    try:
        yield
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputUnwritable(f"cannot write {path} ({exc.strerror or exc}); free space or "
                               "fix the folder, then run it again: it goes on from the chunks "
                               "already written") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomic(table: pa.Table, path: Path) -> None:
    """A part as an Arrow IPC file, on disk (fsync) before it takes its name."""
    tmp = _aside(path)
    with _writing(path, tmp):
        with open(tmp, "wb") as f:
            with pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _read_part(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


class TableOutput:
    """The output of one table run (see the module doc); ``run`` describes the run."""

    def __init__(self, out: Path, run: Mapping[str, Any], overwrite: bool = False) -> None:
        self.out = out
        self.failures = failures_path(out)
        self.parts = out.with_name(f".{out.name}.parts")
        self.run = dict(run)
        self.overwrite = overwrite
        check_apart(out, self.run.get("input"))
        for path in (out, self.failures):  # a pipe's reading waited for a writer for good
            if path.exists() and not path.is_file() and not path.is_dir():
                raise ConfigError(f"--output {out}: {path} is neither a file nor a folder (a "
                                  "pipe, a socket or a device); give another file name")

    def finished(self) -> bool:
        """True when OUT already holds this very run; OutputMismatch when another, unless
        ``overwrite``, or an interrupted run of this one is in the parts folder (an
        ``--overwrite`` run: it resumes, and OUT stays as it is until it is replaced)."""
        if not self.out.exists() or self.overwrite:
            return False
        try:
            meta = pq.read_schema(self.out).metadata or {}
            had = json.loads(meta.get(META_KEY, b"{}"))
        except (pa.ArrowException, OSError, ValueError):
            had = {}
        if had == self.run:  # whatever parts a Ctrl-C in its last step left
            return True
        if self._parts_run() == self.run:
            return False
        if not had:
            raise OutputMismatch(f"--output {self.out} is a file that no crypto-ml table run "
                                 "wrote; choose another file (--overwrite would delete it)")
        self._same_run(had, " holds another run", "replace it, or choose another file")
        return True

    def done_chunks(self) -> set[int]:
        """Chunks already written by an earlier, interrupted run of the same command."""
        manifest = self.parts / MANIFEST
        if self.overwrite:  # now, the cluster reached: a run that cannot start deletes nothing
            shutil.rmtree(self.parts, ignore_errors=True)
            self.overwrite = False  # the parts this run writes from now on are its own
        if not manifest.exists():
            try:
                self.parts.mkdir(exist_ok=True)
            except OSError as exc:  # a file of that name, a read-only place
                raise ConfigError(f"--output {self.out}: cannot make the folder of its parts, "
                                  f"{self.parts} ({exc.strerror or exc})") from None
            _write_text_atomic(self.parts / RUN_ID, uuid.uuid4().hex)
            _write_text_atomic(manifest, json.dumps(self.run, indent=1))
            return set()
        had = json.loads(manifest.read_text())
        self._same_run(had, f": an interrupted run of other settings is in {self.parts}",
                       "start afresh, or rerun it as it was")
        return {int(p.stem.split("-")[1]) for p in self.parts.glob(f"chunk-*{PART}")}

    def _same_run(self, had: dict[str, Any], holds: str, overwrite_to: str) -> None:
        """OutputMismatch naming what differs when ``had`` (a run's settings) is not this run."""
        if had != self.run:
            raise OutputMismatch(f"--output {self.out}{holds} ({_differences(had, self.run)}); "
                                 f"pass --overwrite to {overwrite_to}")

    def _parts_run(self) -> dict[str, Any] | None:
        """The run whose chunks the parts folder holds (None: none, or unreadable)."""
        try:
            return dict(json.loads((self.parts / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @property
    def run_id(self) -> str | None:
        """The id of the run writing the parts (kept by a resumed run); None before
        :meth:`done_chunks` or for parts from before run ids."""
        try:
            return (self.parts / RUN_ID).read_text().strip() or None
        except FileNotFoundError:
            return None

    def next_attempt(self) -> None:
        """A new run id for the parts (the next run's messages must not carry the ids that
        this one revoked, nor its run id, which the workers now take as ended)."""
        if self.parts.is_dir():
            _write_text_atomic(self.parts / RUN_ID, uuid.uuid4().hex)

    def discard(self) -> None:
        """Remove the parts of a run that will not be resumed (an API job cancelled)."""
        shutil.rmtree(self.parts, ignore_errors=True)

    def held_by(self, earlier: TableOutput) -> bool:
        """Whether ``earlier`` (a stopped run that wrote elsewhere: an API job resumed as
        another) left parts of this same run; an OutputMismatch naming what differs
        (:func:`run_differences`) when they are another run's."""
        try:
            had = json.loads((earlier.parts / MANIFEST).read_text())
        except FileNotFoundError:
            return False
        if differ := run_differences(had, self.run):
            raise OutputMismatch(", ".join(differ))
        return True

    def take_parts(self, earlier: TableOutput) -> None:
        """Make ``earlier``'s parts this output's (:meth:`held_by` said they are this run's),
        under a new run id: the run that wrote them may still be alive (a paused process), and
        when it stops it ends its id for the workers, which would then drop this run's
        messages."""
        os.rename(earlier.parts, self.parts)
        self.next_attempt()

    def failed_in(self, index: int) -> int:
        """Series that failed (and were not filled) in chunk ``index``, which the parts hold
        (what a resumed run counts as failed in the chunks it skips)."""
        try:
            return len(failed_series(_read_part(self.parts / f"failed-{index:08d}{PART}")))
        except FileNotFoundError:
            return 0

    def failure_counts(self) -> tuple[int, int]:
        """The failure rows of the finished OUT.failures.parquet, and those filled (none
        when a user removed an empty one)."""
        if not self.failures.exists():
            return 0, 0
        errors = pq.read_table(self.failures, columns=["error"]).column("error")
        filled = pc.sum(_filled(errors)).as_py() or 0
        return len(errors) - filled, filled

    def write_chunk(self, index: int, table: pa.Table, failures: pa.Table) -> None:
        """Chunk ``index``'s rows and failures, each file wholly or not at all."""
        failed = self.parts / f"failed-{index:08d}{PART}"
        if failures.num_rows:
            _write_atomic(failures, failed)
        else:  # one a killed attempt left, before its chunk file: not this chunk's failures
            failed.unlink(missing_ok=True)
        _write_atomic(table, self.parts / f"chunk-{index:08d}{PART}")

    def finish(self, schema: pa.Schema, chunks: Iterable[int], ids: pa.DataType | None = None
               ) -> tuple[int, int]:
        """Join the parts into OUT and OUT.failures.parquet; the number of failure rows, and
        of those the fallback model filled. The parts hold ids as text; both files give them
        the input's type ``ids`` (integer ids come back as integers, as statsforecast returns
        them)."""
        meta = {META_KEY: json.dumps(self.run).encode()}
        failed = sorted(self.parts.glob(f"failed-*{PART}"))  # first: OUT says the run is done
        _concat(self.failures, _with_ids(FAILURES_SCHEMA, ids), failed)
        _concat(self.out, _with_ids(schema, ids).with_metadata(meta),
                (self.parts / f"chunk-{i:08d}{PART}" for i in chunks))
        shutil.rmtree(self.parts)
        return self.failure_counts()


def _with_ids(schema: pa.Schema, ids: pa.DataType | None) -> pa.Schema:
    if ids is None:
        return schema
    return schema.set(schema.get_field_index("unique_id"), pa.field("unique_id", ids))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _aside(path)
    with _writing(path, tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


def _concat(path: Path, schema: pa.Schema, parts: Iterable[Path]) -> None:
    """Copy ``parts`` (in order, a row group each) into ``path``, written aside (under a
    hidden name of this writer's own) and renamed."""
    tmp = _aside(path, hidden=".")
    with _writing(path, tmp):
        with pq.ParquetWriter(tmp, schema, use_dictionary=_text_columns(schema)) as writer:
            for part in parts:
                writer.write_table(_read_part(part).cast(schema.remove_metadata()))
        os.replace(tmp, path)
