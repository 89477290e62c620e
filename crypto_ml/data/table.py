"""Long-format tables (``unique_id, ds, y``), read in batches: the input of table runs.

A table is a Parquet file, a folder of Parquet files (a dataset, hive partitions
allowed) or a CSV file, read with pyarrow's dataset scanner, batch by batch; it is
never loaded into pandas. :meth:`TableSource.check` reads it once, before any work
is sent, and fails with :class:`~crypto_ml.core.errors.InvalidTable` naming the
file, column or first offending series (a missing column, a ``y`` that is not a
number, a ``ds`` that is neither a date nor an integer, duplicate ``(unique_id,
ds)`` rows, an empty table, an unreadable file). :meth:`TableSource.chunks` then
yields the series in chunks of a fixed number of series, in ``unique_id`` order,
so the same table always gives the same chunks (what resuming relies on). The check
keeps each series' id and row count, so the chunks read only the times and values
again, cut where the check found each series.

Memory: a table sorted by ``unique_id`` then ``ds`` (the usual layout of such
tables) streams in memory bounded by a batch and a chunk, plus the ids and row counts
(about 25 bytes a series: 25 MB for a million series). An unsorted table is
sorted first in Arrow memory: about 16 bytes per row plus the ids (1.6 GB for
100 million rows); sort it once yourself to avoid that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from crypto_ml.core.errors import InvalidTable
from crypto_ml.data.ahead import read_ahead
from crypto_ml.data.steps import series_steps
from crypto_ml.data.table_checks import (
    NAME_COLUMNS,
    id_order,
    output_id_type,
    string_ids,
    time_column,
    value_column,
)
from crypto_ml.data.table_files import DEFAULT_COLUMNS, NOT_UTF8, dataset_of, readable, table_files
from crypto_ml.data.table_files import Columns as Columns  # where callers have found it

BATCH_ROWS = 1 << 18
#: How a time column is kept: days since 1970 (dates), nanoseconds (timestamps), integers.
TIME_KINDS = {"date": pa.date32(), "timestamp": pa.timestamp("ns"), "int": pa.int64()}


#: How a message names each time kind.
KIND_WORDS = {"date": "dates", "timestamp": "timestamps", "int": "integers"}


def time_array(values: np.ndarray, kind: str) -> pa.Array:
    """int64 times (as :class:`TableSource` keeps them) as an Arrow array of ``kind``."""
    raw = pa.array(values.astype(np.int32) if kind == "date" else values)
    return raw.cast(TIME_KINDS[kind])


TEXT = pa.string()  # ids are read as text, and written so unless the input's were numbers


@dataclass
class SeriesChunk:
    """``ids[i]``'s values are ``values[offsets[i]:offsets[i+1]]``, oldest first."""

    index: int
    ids: list[str]
    lengths: np.ndarray
    values: np.ndarray
    last_time: np.ndarray  # int64, in the table's time kind (timestamps in UTC)
    step: np.ndarray  # int64: each series' step (crypto_ml.data.steps)
    times: np.ndarray | None = None  # every row's time (int64), beside ``values``
    business: np.ndarray | None = None  # bool: each series steps in business days
    anchor: np.ndarray | None = None  # int64: the day of the month a monthly series keeps


@dataclass(frozen=True)
class TableInfo:
    rows: int
    series: int
    time_kind: str
    presorted: bool
    time_zone: str | None = None  # a timestamp column's zone: the forecasts' times keep it
    #: The ids' type in the output: the input's number type, else text (read as text)
    id_type: pa.DataType = TEXT


class TableSource:
    """One long-format table: checked once (:meth:`check`), then read in chunks."""

    def __init__(self, path: Path | str | pa.Table, columns: Columns = DEFAULT_COLUMNS,
                 only: Sequence[str] | None = None) -> None:
        self.columns = columns
        self.path = path if isinstance(path, pa.Table) else Path(path)
        #: How errors name the table: ``--input PATH``, or "the frame" (crypto_ml.forecast)
        self.label = "the frame" if isinstance(path, pa.Table) else f"--input {self.path}"
        self.only = list(only) if only else None
        #: The table's files, as listed once (none for a frame): read, and fingerprinted
        self.files: list[Path] = []
        self._stored_ids: set[pa.DataType] = set()  # the types the files store ids in
        if isinstance(path, pa.Table):
            self.dataset = ds.dataset(path)
        else:
            self.files, kind = table_files(Path(path))
            self.dataset, self._stored_ids = dataset_of(Path(path), self.files, kind, columns)
        self._sorted: pa.Table | None = None
        self.info: TableInfo | None = None
        self._layout: _Layout | None = None

    def fingerprint(self) -> dict[str, object]:
        """What tells one state of the input from another (a rerun to the same output must
        find the same): a file's size and time; for a folder, its table files' number, total
        size, newest time and a digest of their names, sizes and times (a file added,
        removed, renamed or rewritten changes it)."""
        assert isinstance(self.path, Path)  # a frame has no state to find again
        if self.path.is_file():
            stat = self.path.stat()
            return {"input_size": stat.st_size, "input_mtime": stat.st_mtime_ns}
        stats = [(str(f.relative_to(self.path)), f.stat()) for f in self.files]
        digest = hashlib.sha256("\n".join(f"{name}\0{st.st_size}\0{st.st_mtime_ns}"
                                           for name, st in stats).encode()).hexdigest()[:16]
        return {"input_size": sum(st.st_size for _, st in stats),
                "input_mtime": max(st.st_mtime_ns for _, st in stats),
                "input_files": f"{len(stats)} file(s), {digest}"}

    def _batches(self, values: bool = True, ids: bool = True) -> Iterator[pa.RecordBatch]:
        """The (with ``ids``) id, time and (with ``values``) value columns, batch by batch;
        ids are read whenever ``only`` picks series by them."""
        if self._sorted is not None:
            yield from self._sorted.to_batches(BATCH_ROWS)
            return
        c = self.columns
        try:
            has = self.dataset.schema.names
        except UnicodeError:
            raise InvalidTable(f"{self.label}: {NOT_UTF8}") from None
        missing = [n for n in (c.id, c.time, c.value) if n not in has]
        if missing:
            raise InvalidTable(f"{self.label}: no column {', '.join(map(repr, missing))} (it "
                               f"has {', '.join(has)}); {NAME_COLUMNS}")
        try:
            names = [c.id] if ids or self.only else []
            yield from read_ahead(self._scan([*names, c.time, *([c.value] if values else [])]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise InvalidTable(f"{self.label}: cannot read the table ({readable(exc)})") from None

    def _readers(self) -> list[pq.ParquetFile]:
        """One reader a file when the table is Parquet files (else none)."""
        files = [f.path for f in self.dataset.get_fragments()] \
            if isinstance(self.dataset, ds.FileSystemDataset) \
            and isinstance(self.dataset.format, ds.ParquetFileFormat) else []
        return [pq.ParquetFile(f, read_dictionary=_dictionary_ids(f, self.columns.id))
                for f in files]

    def _stored_as_numbers(self) -> bool:
        """True when every file stores the value column as numbers (typed Parquet): no row
        can hold a non-number, so checking the table need not read the values."""
        readers = self._readers()
        numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
        return bool(readers) and all(
            self.columns.value in r.schema_arrow.names
            and any(t(r.schema_arrow.field(self.columns.value).type) for t in numeric)
            for r in readers)

    def _scan(self, names: list[str]) -> Iterator[pa.RecordBatch]:
        """The columns ``names``, batch by batch. Parquet files whose own columns hold them are
        read one row group at a time (``ParquetFile.iter_batches``): the dataset scanner
        decodes row groups ahead, hundreds of MB on wide row groups. Everything else (CSV,
        an id in a hive partition's folder name, a DataFrame) goes through the scanner."""
        readers = self._readers()
        if readers and all(set(names) <= set(r.schema_arrow.names) for r in readers):
            wanted = pa.array(self.only, pa.string()) if self.only else None
            for reader in readers:
                for batch in reader.iter_batches(BATCH_ROWS, columns=names):
                    if wanted is not None:
                        batch = batch.filter(pc.is_in(
                            pc.cast(batch.column(self.columns.id), pa.string()), wanted))
                    yield batch
            return
        where = pc.field(self.columns.id).isin(self.only) if self.only else None
        yield from self.dataset.to_batches(columns=names, filter=where, batch_size=BATCH_ROWS,
                                           batch_readahead=1, fragment_readahead=1)

    def _arrays(self, batch: pa.RecordBatch
                ) -> tuple[pa.Array, np.ndarray, str, str | None, np.ndarray]:
        c = self.columns
        ids = string_ids(batch.column(c.id), c.id)
        if ids.null_count:
            raise InvalidTable(f"--input: column {c.id!r} is empty in some row")
        times, kind, zone = time_column(batch.column(c.time), ids, c.time)
        values = (value_column(batch.column(c.value), ids, c.value) if c.value in batch.schema.names
                  else np.empty(0))
        return ids, times, kind, zone, values

    def check(self) -> TableInfo:
        """Read the whole table once; its size, or InvalidTable (see the module doc). An
        unsorted table is sorted and read again (duplicates then sit side by side)."""
        info, layout = self._walk()
        if not info.rows:
            if self.only:  # none of the ids asked for is there: each is named
                self._all_picked(pa.array([], pa.string()))
            raise InvalidTable(f"{self.label}: the table is empty")
        if not info.presorted:
            self._sort()
            info, layout = self._walk()
            info = replace(info, presorted=False)
        if self.only:
            self._all_picked(layout.ids)
        self.info, self._layout = info, layout
        return info

    def _all_picked(self, ids: pa.Array) -> None:
        """InvalidTable naming the ``--coins`` ids the table does not hold."""
        wanted = pa.array(self.only, pa.string())
        absent = pc.filter(wanted, pc.invert(pc.is_in(wanted, pc.cast(ids, pa.string())))
                           ).to_pylist()
        if absent:
            more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
            raise InvalidTable(f"{self.label} has no series {', '.join(map(repr, absent[:5]))}"
                               f"{more} (--coins picks series by their exact ids)")

    def _walk(self) -> tuple[TableInfo, _Layout]:
        """Rows, series and time kind of the table as read now; whether it is sorted by id,
        then time; where each series starts (its rows are then read without their ids);
        InvalidTable at the first duplicated ``(id, time)`` of adjacent rows."""
        rows = 0
        kind = ""
        presorted = True
        prev: tuple[str, int] | None = None
        firsts: list[pa.Array] = []
        starts: list[np.ndarray] = []
        zone: str | None = None
        for batch in self._batches(values=not self._stored_as_numbers()):
            if not batch.num_rows:
                continue
            ids, times, found, zoned, _ = self._arrays(batch)
            if kind and found != kind:  # files that store the times alike read alike
                raise InvalidTable(f"{self.label}: column {self.columns.time!r} holds "
                                   f"{KIND_WORDS[kind]} in some rows and {KIND_WORDS[found]} "
                                   "in others (files written differently?); write them alike")
            if kind and zoned != zone:  # text times: read as UTC, or moved out of their zone
                raise InvalidTable(f"{self.label}: column {self.columns.time!r} holds times "
                                   + (f"in zone {zone} in some rows and {zoned} in others "
                                      "(files written differently?); write them in one zone"
                                      if zone and zoned else
                                      "with a zone in some rows and without one in others (files "
                                      "written differently?); give every time a zone, or none"))
            kind, zone = found, zoned
            new, order_ok, dup = id_order(ids, times, prev)
            if dup is not None:
                raise InvalidTable(f"--input: series {dup!r} has two rows at the same "
                                   f"{self.columns.time!r}; keep one")
            presorted &= order_ok
            firsts.append(pc.cast(ids.take(pa.array(new)), pa.string()))
            starts.append(new + rows)
            rows += batch.num_rows
            prev = (str(ids[-1].as_py()), int(times[-1]))
        begin = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        layout = _Layout(pa.concat_arrays(firsts) if firsts else pa.array([], pa.string()),
                         np.diff(np.append(begin, rows)))
        return TableInfo(rows, len(begin), kind, presorted, zone, self._id_type()), layout

    def _id_type(self) -> pa.DataType:
        """The ids' type in the output: as the input stores them when every file does so
        alike (integers of any width: int64), else text."""
        found = {output_id_type(t) for t in self._stored_ids}
        if len(found) > 1:
            return pa.int64() if all(pa.types.is_integer(t) for t in found) else pa.string()
        return output_id_type(self.dataset.schema.field(self.columns.id).type)

    def _sort(self) -> None:
        """Sort an unsorted table in memory (see the module doc); later reads read it. Files
        that store a column in different types (ns and us times, int and float values) are
        brought to one; InvalidTable when they cannot be."""
        c = self.columns
        tables = [pa.Table.from_batches([b]) for b in self._batches()]
        tables = [t.set_column(0, c.id, pc.cast(t.column(0), pa.string())) for t in tables]
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidTable(f"{self.label}: its files store a column in types that do not "
                               f"mix ({readable(exc)}); write them alike") from None
        self._sorted = table.sort_by([(c.id, "ascending"), (c.time, "ascending")])

    def chunks(self, size: int) -> Iterator[SeriesChunk]:
        """The series, ``size`` to a chunk, in order, cut where :meth:`check` found them:
        only their times and values are read again."""
        if self._layout is None:
            self.check()
        assert self._layout is not None and self.info is not None  # check() sets them
        layout, kind, zone = self._layout, self.info.time_kind, self.info.time_zone
        rows = _Rows(self._columns(), self.label)
        for index, first in enumerate(range(0, len(layout.lengths), size)):
            lengths = layout.lengths[first : first + size]
            times, values = rows.take(int(lengths.sum()))
            last, step, business, anchor = series_steps(times, lengths, kind, zone)
            yield SeriesChunk(index, layout.ids.slice(first, len(lengths)).to_pylist(), lengths,
                              values, last, step, times, business, anchor)
        rows.finish()

    def _columns(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each batch's times (int64) and values (float64), ids left unread when they can be."""
        c = self.columns
        for batch in self._batches(ids=False):
            if batch.num_rows:
                ids = (batch.column(c.id) if c.id in batch.schema.names
                       else pa.nulls(batch.num_rows, pa.string()))  # checked already: unused
                yield (time_column(batch.column(c.time), ids, c.time)[0],
                       value_column(batch.column(c.value), ids, c.value))


@dataclass(frozen=True)
class _Layout:
    """Each series' id and number of rows, in the table's order, as the check read them."""

    ids: pa.Array
    lengths: np.ndarray


class _Rows:
    """The table's times and values, taken a given number of rows at a time."""

    def __init__(self, batches: Iterator[tuple[np.ndarray, np.ndarray]], label: str) -> None:
        self.batches, self.label = batches, label
        self.times = self.values = np.empty(0)
        self.at = 0  # rows of the current batch already taken

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` rows: a view of one batch when they lie in it, else joined."""
        times: list[np.ndarray] = []
        values: list[np.ndarray] = []
        while n:
            if self.at == len(self.times):
                got = next(self.batches, None)
                if got is None:
                    raise self._changed("fewer")
                (self.times, self.values), self.at = got, 0
                continue
            k = min(n, len(self.times) - self.at)
            times.append(self.times[self.at : self.at + k])
            values.append(self.values[self.at : self.at + k])
            self.at, n = self.at + k, n - k
        if len(times) == 1:
            return times[0], values[0]
        return np.concatenate(times or [np.empty(0, np.int64)]), \
            np.concatenate(values or [np.empty(0)])

    def finish(self) -> None:
        if self.at < len(self.times) or next(self.batches, None) is not None:
            raise self._changed("more")

    def _changed(self, what: str) -> InvalidTable:
        return InvalidTable(f"{self.label}: the table holds {what} rows than when it was "
                            "checked; it changed during the run: run again once it is written")




def _dictionary_ids(file: str, column: str) -> list[str]:
    """``[column]`` when the file stores it as strings: read as a dictionary array, the ids of
    a long table cost their indices (a series' id repeats on each of its rows) instead of
    one string a row (at 100 million rows, 0.7 s against 4 s)."""
    schema = pq.read_schema(file)
    found = schema.field(column).type if column in schema.names else None
    return [column] if found is not None and (pa.types.is_string(found)
                                              or pa.types.is_large_string(found)) else []
