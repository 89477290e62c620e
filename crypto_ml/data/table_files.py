"""A long table's files: which ones a path names (a file, or a folder's Parquet or CSV files),
each checked from its footer alone, and the pyarrow dataset that reads them; the names of
the id, time and value columns (:class:`Columns`). :mod:`crypto_ml.data.table` reads it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from crypto_ml.core.errors import InvalidTable
from crypto_ml.data.table_checks import COLUMN_OPTIONS, NAME_COLUMNS


@dataclass(frozen=True)
class Columns:
    """The names of the id, time and value columns (``--id-col``, ``--time-col``, ``--value-col``)."""

    id: str = "unique_id"
    time: str = "ds"
    value: str = "y"

    def __post_init__(self) -> None:
        if len({self.id, self.time, self.value}) < 3:
            raise InvalidTable(f"the id, time and value columns must be three different "
                               f"columns; got {self.id!r}, {self.time!r} and {self.value!r} "
                               f"({', '.join(COLUMN_OPTIONS)})")


DEFAULT_COLUMNS = Columns()
NOT_UTF8_NAME = "its name is not UTF-8 text, which Arrow cannot open; rename it"
#: A table whose header (or column names) Arrow read as bytes that are no UTF-8
NOT_UTF8 = ("its column names are not UTF-8 text (a CSV saved as Latin-1 or UTF-16, or no "
            "table at all); save it as UTF-8")


def table_files(path: Path) -> tuple[list[Path], str]:
    """The files of the table at ``path`` and their format (``parquet`` or ``csv``): the file
    itself, or a folder's files of one format, at any depth (hive partitions), names and
    suffixes in any case; as pyarrow, Spark and Hive do, names that start with ``.`` or ``_``
    (``_SUCCESS``, ``_metadata``, an editor's or macOS' ``._x.parquet``) are not data."""
    if not path.exists():
        raise InvalidTable(f"--input {path}: no such file or folder")
    if not _utf8(path):
        raise InvalidTable(f"--input {shown(path)}: {NOT_UTF8_NAME}")
    if path.is_file():
        return [path], "csv" if _is_csv(path) else "parquet"
    if not path.is_dir():
        raise InvalidTable(f"--input {path}: neither a file nor a folder (a pipe, a socket or a "
                           "device); give a Parquet or CSV file, or a folder of them")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
        part.startswith((".", "_")) for part in p.relative_to(path).parts))
    parquet = [p for p in files if p.suffix.lower() in (".parquet", ".pq")]
    csv = [p for p in files if _is_csv(p)]
    if (odd := next((p for p in [*parquet, *csv] if not _utf8(p)), None)) is not None:
        raise InvalidTable(f"--input: {shown(odd.relative_to(path))} in {path}: "
                           f"{NOT_UTF8_NAME}")
    if parquet and csv:  # one table is one format: say so rather than skip a part of it
        raise InvalidTable(f"--input {path}: the folder holds both Parquet ({parquet[0].name}) "
                           f"and CSV ({csv[0].name}) files; give a folder of one kind")
    if parquet:
        return parquet, "parquet"
    if csv:
        return csv, "csv"
    raise InvalidTable(f"--input {path}: the folder holds no .parquet or .csv file")


def _utf8(path: Path) -> bool:
    try:
        str(path).encode()
    except UnicodeEncodeError:  # bytes the file system's names decode to no text
        return False
    return True


def shown(path: Path | str) -> str:
    """``path`` as text that any output takes: a name's bytes that are no UTF-8 as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith((".csv", ".csv.gz"))


def readable(exc: BaseException, most: int = 600) -> str:
    """An error's words fit for one line: what does not print (a file's raw bytes, which
    pyarrow quotes) as ``?``, and at most ``most`` characters."""
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in str(exc))
    return text if len(text) <= most else text[:most] + "..."


def dataset_of(path: Path, files: list[Path], kind: str, columns: Columns
               ) -> tuple[ds.Dataset, set[pa.DataType]]:
    """The dataset that reads ``files``, and the types its Parquet files store the ids in, as
    their footers say (none for a CSV, or ids from hive folders)."""
    try:
        return _open(path, files, kind, columns)
    except (pa.ArrowException, OSError) as exc:  # an empty or ragged CSV, say
        raise InvalidTable(f"--input {path}: cannot read the table ({readable(exc)})") from None
    except UnicodeError:  # Arrow's column names as Python text
        raise InvalidTable(f"--input {path}: {NOT_UTF8}") from None


def _open(path: Path, files: list[Path], kind: str, columns: Columns
          ) -> tuple[ds.Dataset, set[pa.DataType]]:
    if kind == "csv":
        # ids as text; values as text too, made numbers batch by batch (a value that is none
        # is named with its series), not by a guess from the first block of rows (integers,
        # or empty cells, then decimals). Only an empty cell is read as missing: an id "NA"
        # or "null" is an id (the value column reads such words as missing itself)
        convert = pacsv.ConvertOptions(column_types={columns.id: pa.string(),
                                                     columns.value: pa.string()},
                                       null_values=[""], strings_can_be_null=True)
        fmt = ds.CsvFileFormat(convert_options=convert)
        return ds.dataset([str(f) for f in files], format=fmt), set()
    keys: set[str] = set()
    ids: set[pa.DataType] = set()
    times: dict[str, Path] = {}  # how a file stores the times: the first file that does so
    for file in files:  # the footers only: name a bad file before any work
        folders, id_type, time_type = _check_file(file, path, columns)
        keys |= folders
        ids |= {id_type} if id_type is not None else set()
        times.setdefault(_stored_as(time_type), file)
    if len(times) > 1:
        (one, first), (other, second) = list(times.items())[:2]
        raise InvalidTable(f"--input: column {columns.time!r} holds {one} in {first} and "
                           f"{other} in {second} (files written differently?); write them "
                           "alike")
    # no pre-buffering: a whole row group's columns read ahead cost hundreds of MB
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        pre_buffer=False))
    if path.is_file():
        return ds.dataset(str(path), format=fmt), ids
    # the listed files alone (not a README beside them); partition values as text, so that
    # unique_id=007 stays '007' and is not the number 7
    text = ds.partitioning(pa.schema([(k, pa.string()) for k in sorted(keys)]), flavor="hive")
    return ds.dataset([str(f) for f in files], format=fmt, partition_base_dir=str(path),
                      partitioning=text), ids


def _stored_as(time_type: pa.DataType | None) -> str:
    """How a file stores the times, in words: the kinds that do not mix (dates, timestamps
    with a zone and without, integers, text...); widths and units do."""
    if time_type is None:
        return "hive folders"
    if pa.types.is_dictionary(time_type):
        return _stored_as(time_type.value_type)
    if pa.types.is_timestamp(time_type):
        return "timestamps with a zone" if time_type.tz else "timestamps without a zone"
    for words, test in (("dates", pa.types.is_date), ("integers", pa.types.is_integer),
                        ("text", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))):
        if test(time_type):
            return words
    return str(time_type)


def _check_file(file: Path, root: Path, columns: Columns
                ) -> tuple[set[str], pa.DataType | None, pa.DataType | None]:
    """The hive keys of ``file``'s folders (``unique_id=...``) and the types it stores the ids
    and the times in (None when a folder gives them); InvalidTable naming it when it is no
    Parquet, or lacks a column that no such folder gives."""
    try:
        schema = pq.read_metadata(file).schema.to_arrow_schema()
        names = schema.names
    except (pa.ArrowException, OSError) as exc:
        raise InvalidTable(f"--input: cannot read {file} as Parquet ({readable(exc)})") from None
    folders = {part.split("=", 1)[0] for part in file.relative_to(root).parts[:-1]
               if "=" in part} if file != root else set()
    missing = [c for c in (columns.id, columns.time, columns.value)
               if c not in names and c not in folders]
    if missing:
        where = f"--input {file}: no" if file == root else f"--input: {file} has no"
        every = "" if file == root else "every file of the table needs them, or "
        raise InvalidTable(f"{where} column {', '.join(map(repr, missing))} (it has "
                           f"{', '.join(names)}); {every}{NAME_COLUMNS}")
    def stored(name: str) -> pa.DataType | None:
        return schema.field(name).type if name in names else None

    return folders, stored(columns.id), stored(columns.time)
