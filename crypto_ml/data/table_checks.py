"""The checks a long table's columns pass, batch by batch, before any work is sent.

A time column is dates, timestamps or integers; a value column numbers (nulls are missing
closes); ids are strings, kept dictionary-encoded when Parquet gives them so; within a batch
the rows run by id, then time, with no ``(id, time)`` twice. Each failure is an
:class:`~crypto_ml.core.errors.InvalidTable` naming the column and the first offending series.
:mod:`crypto_ml.data.table` reads the batches; this module only looks at them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crypto_ml.core.errors import InvalidTable

#: The command line's names of the id, time and value columns' options.
COLUMN_OPTIONS = ("--id-col", "--time-col", "--value-col")
#: What a table missing a column is told (:func:`as_given` puts it in the caller's words).
NAME_COLUMNS = "name yours with {}, {} and {}".format(*COLUMN_OPTIONS)


def as_given(message: str, named: str, path: Path | None = None, given: str = "",
             columns: tuple[str, str, str] = COLUMN_OPTIONS) -> str:
    """A table check's ``message`` in the caller's words: ``--input`` as ``named`` (``input
    'walks.parquet'``, ``the frame``), the column options as ``columns`` (a job body's
    ``id_col``...); with ``path``, the input's full path as ``given`` and files inside it
    relative to it, so that no reply shows where a server keeps its data."""
    if path is not None:
        message = message.replace(f"--input {path}", named).replace(f"{path}/", "")
        message = message.replace(str(path), given[:200])
    for option, word in zip(COLUMN_OPTIONS, columns, strict=True):
        message = message.replace(option, word)
    return message.replace("--input", named)


def first_bad(ids: pa.Array, values: pa.Array, ok: pa.Array) -> tuple[str, object]:
    i = int(np.flatnonzero(~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool))[0])
    return str(ids[i].as_py()), values[i].as_py()


def time_column(column: pa.Array, ids: pa.Array, name: str
                ) -> tuple[np.ndarray, str, str | None]:
    """The time column as int64 in its kind, and the zone its times are in (a timestamp
    column's own; UTC for text times that carry one, as a CSV's are read); InvalidTable naming
    the first bad value."""
    if pa.types.is_duration(column.type) or pa.types.is_time(column.type) or \
            pa.types.is_nested(column.type) or pa.types.is_boolean(column.type):
        raise InvalidTable(f"--input: column {name!r} is of type {column.type}, not a point in "
                           "time: give dates, timestamps or integers")
    kind = ("int" if pa.types.is_integer(column.type) else "date"
            if pa.types.is_date(column.type) else "timestamp")
    if not (pa.types.is_integer(column.type) or pa.types.is_temporal(column.type)):
        parsed = _timestamps(column)
        column, kind = parsed if parsed is not None else _text_times(column, ids, name)
    if column.null_count:
        series, _ = first_bad(ids, column, pc.is_valid(column))
        raise InvalidTable(f"--input: column {name!r} is empty in a row of series {series!r}")
    zone = getattr(column.type, "tz", None)
    if kind == "date":
        column = pc.cast(column, pa.date32())
        return np.asarray(column.cast(pa.int32()).to_numpy(), dtype=np.int64), kind, zone
    if kind == "timestamp":
        try:
            column = pc.cast(column, pa.timestamp("ns"))
        except pa.ArrowInvalid:  # seconds, ms or us beyond what nanoseconds hold
            raise InvalidTable(f"--input: column {name!r} holds a time outside 1677-09-21 to "
                               "2262-04-11, the range this reads (as nanoseconds)") from None
        return np.asarray(column.cast(pa.int64()).to_numpy(), dtype=np.int64), kind, zone
    largest = pc.max(column).as_py() if pa.types.is_unsigned_integer(column.type) else None
    if largest is not None and largest > np.iinfo(np.int64).max:
        raise InvalidTable(f"--input: column {name!r} holds {largest}, above the largest time "
                           "this reads (2**63 - 1)")
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64), kind, zone


def _timestamps(column: pa.Array) -> tuple[pa.Array, str] | None:
    """Text times read as a CSV's are, and their kind: dates (``2017-09-22``), else ISO
    timestamps without a zone, or with one (``Z``, ``+01:00``: then in UTC); None when some
    are none of these."""
    for to, kind in ((pa.date32(), "date"), (pa.timestamp("ns"), "timestamp"),
                     (pa.timestamp("ns", tz="UTC"), "timestamp")):
        try:
            return pc.cast(column, to), kind
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def _text_times(column: pa.Array, ids: pa.Array, name: str) -> tuple[pa.Array, str]:
    """Times written as text that are not all timestamps: all integers (``"1"``, ``"2"``),
    or InvalidTable naming the first value that is neither a date nor (among integers) one."""
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    integers = pc.match_substring_regex(text, r"^[-+]?\d{1,18}$")
    if pc.all(integers).as_py():
        return pc.cast(text, pa.int64()), "int"
    _no_mixed_zones(text, ids, column, name)
    dates = pc.is_valid(pc.strptime(text, "%Y-%m-%d", "s", error_is_null=True))
    series, value = first_bad(ids, column, dates if pc.any(dates).as_py() else integers)
    raise InvalidTable(f"--input: column {name!r} holds {value!r} (series {series!r}), "
                       "neither a date nor an integer")


def _no_mixed_zones(text: pa.Array, ids: pa.Array, column: pa.Array, name: str) -> None:
    """InvalidTable naming one of each when some times have a zone and the others none,
    each kind readable alone (which instant a time without a zone is, is not known)."""
    zoned = pc.match_substring_regex(text, r"(Z|[+-]\d{2}:?\d{2})$")
    if not pc.any(zoned).as_py() or pc.all(zoned).as_py():
        return
    plain = pc.invert(zoned)
    if _timestamps(text.filter(zoned)) is None or _timestamps(text.filter(plain)) is None:
        return
    with_zone, without = first_bad(ids, column, plain), first_bad(ids, column, zoned)
    raise InvalidTable(f"--input: column {name!r} mixes times with a zone ({with_zone[1]!r}, "
                       f"series {with_zone[0]!r}) and without one ({without[1]!r}, series "
                       f"{without[0]!r}); give every time a zone, or none")


def value_column(column: pa.Array, ids: pa.Array, name: str) -> np.ndarray:
    """The value column as float64 (nulls: NaN, a missing close); InvalidTable otherwise.
    Integers beyond 2**53 become the nearest float, as in pandas."""
    if pa.types.is_boolean(column.type) or pa.types.is_nested(column.type) or \
            pa.types.is_temporal(column.type):
        raise InvalidTable(f"--input: column {name!r} is of type {column.type}, not numbers")
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            or pa.types.is_decimal(column.type) or pa.types.is_null(column.type)):
        column = _missing_words_as_null(column)
        try:
            column = pc.cast(column, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            numeric = pc.match_substring_regex(
                pc.utf8_trim_whitespace(pc.cast(column, pa.string())),
                r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^(?i:nan)$")
            series, value = first_bad(ids, column, pc.or_kleene(numeric, pc.is_null(column)))
            raise InvalidTable(f"--input: column {name!r} holds {value!r} (series {series!r}), "
                               "not a number") from None
    return np.asarray(column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False),
                      dtype=np.float64)


#: Words that say a value is missing (pandas' and pyarrow's own list, less the empty cell).
MISSING_WORDS = pa.array(["#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                          "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "n/a", "nan",
                          "null", "None"])


def _missing_words_as_null(column: pa.Array) -> pa.Array:
    """Text values that say they are missing (``NA``, ``null``...) as nulls."""
    try:
        text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not text: the cast names it
        return column
    return pc.if_else(pc.is_in(text, MISSING_WORDS), pa.scalar(None, text.type), text)


def string_ids(column: pa.Array, name: str = "unique_id") -> pa.Array:
    """Ids as strings, or as a dictionary of strings when read as one (kept encoded);
    InvalidTable for ids that are neither text nor numbers, or an empty one."""
    if pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type):
        text = column
    elif pa.types.is_nested(column.type):
        raise InvalidTable(f"--input: column {name!r} is of type {column.type}; ids are text "
                           "or numbers")
    else:
        try:
            text = pc.cast(column, pa.string())
        except pa.ArrowInvalid:  # bytes that are not UTF-8
            raise InvalidTable(f"--input: column {name!r} holds an id that is not UTF-8 "
                               "text") from None
    values = text.dictionary if isinstance(text, pa.DictionaryArray) else text
    if pc.any(pc.equal(values, "")).as_py():
        raise InvalidTable(f"--input: column {name!r} holds an empty id; give every series "
                           "a name")
    return text


def output_id_type(found: pa.DataType) -> pa.DataType:
    """The type a table's ids get in the output: numbers stay numbers (a dictionary's values,
    pandas' category, count), so the forecasts merge back onto the input; anything else is
    text, as they are read."""
    found = getattr(found, "value_type", found)
    return found if pa.types.is_integer(found) or pa.types.is_floating(found) else pa.string()


def same_as_next(ids: pa.Array) -> np.ndarray:
    """``same[i]``: row ``i``'s id equals row ``i + 1``'s. A dictionary whose values are all
    distinct is compared by its indices; any other array by its strings."""
    if isinstance(ids, pa.DictionaryArray) and \
            len(pc.unique(ids.dictionary)) == len(ids.dictionary):
        index = np.asarray(ids.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        return np.asarray(index[:-1] == index[1:], dtype=bool)
    text = pc.cast(ids, pa.string())
    return np.asarray(pc.equal(text.slice(0, len(text) - 1), text.slice(1))
                      .to_numpy(zero_copy_only=False), dtype=bool)


def id_order(ids: pa.Array, times: np.ndarray, prev: tuple[str, int] | None
             ) -> tuple[np.ndarray, bool, str | None]:
    """(the rows where a series starts, rows ordered by id then time, first duplicated
    series); ``prev``: the id and time of the row before the batch."""
    a, b = ids.slice(0, len(ids) - 1), ids.slice(1)
    same = same_as_next(ids)
    later, now = times[1:], times[:-1]  # compared, not subtracted: a difference may overflow
    dup = np.flatnonzero(same & (later == now))
    first_dup = str(ids[int(dup[0])].as_py()) if len(dup) else None
    starts = np.flatnonzero(~same) + 1
    # within a series the times rise; where a series ends, the next id sorts after it (the
    # ids compared there alone: a few per hundred rows)
    ends = pa.array(starts - 1)
    ordered = bool(np.all(later[same] > now[same])) and bool(np.all(np.asarray(pc.less(
        pc.cast(a.take(ends), pa.string()), pc.cast(b.take(ends), pa.string())
    ).to_numpy(zero_copy_only=False), dtype=bool)))
    first = str(ids[0].as_py())
    if prev is not None and first == prev[0]:  # the batch goes on with the series before
        first_dup = first if int(times[0]) == prev[1] else first_dup
        ordered &= int(times[0]) > prev[1]
        return starts, ordered, first_dup
    if prev is not None:  # UTF-8 bytes sort as code points: Python's order is Arrow's
        ordered &= prev[0] < first
    return np.concatenate([[0], starts]), ordered, first_dup
