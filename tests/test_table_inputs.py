"""Tables and outputs as users have them, from an outside probe of ``send-tasks --input``:
folders whose files store a column in different types, ids that are numbers in one file and
text in another, times past 2262, ids that are not UTF-8, CSVs whose first rows mislead a
type guess, hidden files beside the data; an output that two runs want at once, a disk that
refuses a write, a failures file a user removed. Each either works or gets one line naming
the problem, never a traceback after the work."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from table_support import random_walks, write_parquet

from crypto_ml.core.errors import ConfigError, InvalidTable, OutputUnwritable
from crypto_ml.data.steps import future_times, series_steps
from crypto_ml.data.table import Columns, TableSource
from crypto_ml.dispatch.table_output import FAILURES_SCHEMA, TableOutput, _write_atomic


def _file(path: Path, ids: list[object], times: pa.Array, values: pa.Array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"unique_id": ids, "ds": times, "y": values}), path)
    return path


def _days(first: int, n: int, unit: str) -> pa.Array:
    per_day = {"ns": 86_400 * 10**9, "us": 86_400 * 10**6, "s": 86_400}[unit]
    return pa.array([(first + i) * per_day for i in range(n)], pa.timestamp(unit))


def _read_all(source: TableSource) -> dict[str, list[float]]:
    source.check()
    out: dict[str, list[float]] = {}
    for chunk in source.chunks(10):
        for i, sid in enumerate(chunk.ids):
            out[sid] = chunk.values[chunk.lengths[:i].sum():chunk.lengths[:i + 1].sum()].tolist()
    return out


def test_a_folder_whose_files_store_columns_in_other_types_is_read_as_one(
        tmp_path: Path) -> None:
    # by date, as such folders are kept: the series run across files (so the table is sorted
    # in memory), one file in microseconds, another with float32 values and int ids
    _file(tmp_path / "t" / "jan1.parquet", ["b", "a"], _days(0, 1, "ns").take([0, 0]),
          pa.array([2.0, 1.0]))
    _file(tmp_path / "t" / "jan2.parquet", ["b", "a"], _days(1, 1, "us").take([0, 0]),
          pa.array([4, 3], pa.float32()))
    assert _read_all(TableSource(tmp_path / "t")) == {"a": [1.0, 3.0], "b": [2.0, 4.0]}


def test_times_centuries_apart_are_compared_not_subtracted(tmp_path: Path) -> None:
    # 1700 and 2250 are 550 years apart, past int64 nanoseconds: the wrapped difference read
    # the unsorted table as sorted (a forecast from the 1700 row, dated 1734), and a sorted
    # series stepped a day after 2250 instead of failing as past the last time
    years = pa.array(np.array(["2000-01-01", "2250-01-01", "1700-01-01", "1700-01-02"],
                              "datetime64[ns]"))
    source = TableSource(_file(tmp_path / "t.parquet", ["a"] * 4, years, pa.array([1.0, 2, 3, 4])))
    assert _read_all(source) == {"a": [3.0, 4.0, 1.0, 2.0]}  # in time order
    assert source.info is not None and not source.info.presorted
    times = np.sort(years.to_numpy().astype(np.int64))
    last, step, _, _ = series_steps(times[1:], np.array([3]), "timestamp")
    _, beyond = future_times("timestamp", last, step, 2)
    assert beyond.tolist() == [True]  # a 250-year step from 2250: past 2262, said so


def test_files_in_two_zones_are_refused_naming_both(tmp_path: Path) -> None:
    # both had a zone, yet the error said some rows had none
    for name, zone in (("a", "US/Eastern"), ("b", "Asia/Tokyo")):
        _file(tmp_path / "t" / f"{name}.parquet", [name], _days(0, 1, "ns").cast(
            pa.timestamp("ns", tz=zone)), pa.array([1.0]))
    with pytest.raises(InvalidTable, match=r"in zone US/Eastern in some rows and Asia/Tokyo in "
                                           r"others .*; write them in one zone"):
        TableSource(tmp_path / "t").check()


def test_types_that_do_not_mix_are_named_before_any_work(tmp_path: Path) -> None:
    _file(tmp_path / "t" / "a.parquet", ["b"], _days(0, 1, "ns"), pa.array([1.0]))
    _file(tmp_path / "t" / "b.parquet", ["a"], pa.array(["2020-01-02"]), pa.array([2.0]))
    with pytest.raises(InvalidTable, match=r"'ds' holds timestamps without a zone in \S*a\.parquet"
                                           r" and text in \S*b\.parquet"):
        TableSource(tmp_path / "t").check()


def test_times_with_a_zone_in_one_file_and_without_in_another_are_named(
        tmp_path: Path) -> None:
    # the second file's times were read as UTC without a word
    _file(tmp_path / "t" / "a.parquet", ["a"], _days(0, 1, "ns").cast(pa.timestamp("ns", "UTC")),
          pa.array([1.0]))
    _file(tmp_path / "t" / "b.parquet", ["b"], _days(0, 1, "ns"), pa.array([2.0]))
    with pytest.raises(InvalidTable, match=r"timestamps with a zone in .* and timestamps without"):
        TableSource(tmp_path / "t").check()


def test_a_csv_without_the_columns_is_named_not_a_crash(tmp_path: Path) -> None:
    # a coin's price file given as a table: the time column's zone was looked up before the
    # missing columns were named (a KeyError, a 500 from POST /v1/jobs)
    (tmp_path / "coin.csv").write_text("Date,Close\n2017-09-01,1.0\n")
    with pytest.raises(InvalidTable, match="no column 'unique_id', 'ds', 'y'"):
        TableSource(tmp_path / "coin.csv").check()


def test_text_times_with_a_zone_in_one_file_and_without_in_another_are_named(
        tmp_path: Path) -> None:
    # both files store text: the second's were read in the first's zone, or moved to UTC
    _file(tmp_path / "t" / "a.parquet", ["a"], pa.array(["2020-01-01T00:00:00"]), pa.array([1.0]))
    _file(tmp_path / "t" / "b.parquet", ["b"], pa.array(["2020-01-01T00:00:00+05:00"]),
          pa.array([2.0]))
    with pytest.raises(InvalidTable, match="times with a zone in some rows and without"):
        TableSource(tmp_path / "t").check()


@pytest.mark.parametrize(("text", "kind", "zone"), [
    ("2013-04-28T00:00:00+01:00", "timestamp", "UTC"), ("2013-04-28", "date", None)])
def test_text_times_in_parquet_are_read_as_a_csv_s_are(
        tmp_path: Path, text: str, kind: str, zone: str | None) -> None:
    # a zone written in the text was dropped from Parquet's output (CSV's kept it as UTC), and
    # dates came out as timestamps (CSV's as dates)
    _file(tmp_path / "t.parquet", ["a"], pa.array([text]), pa.array([1.0]))
    (tmp_path / "t.csv").write_text(f"unique_id,ds,y\na,{text},1.0\n")
    for path in ("t.parquet", "t.csv"):
        info = TableSource(tmp_path / path).check()
        assert (info.time_kind, info.time_zone) == (kind, zone), path


@pytest.mark.parametrize(("other", "words"), [
    (pa.array([18_000, 18_001], pa.date32()), "dates in .* and timestamps"),
    (pa.array([1, 2], pa.int64()), "integers in .* and timestamps"),
])
def test_times_of_another_kind_in_one_file_are_named_not_misread(
        tmp_path: Path, other: pa.Array, words: str) -> None:
    # each file sorted, each series in one file: read as they come, a file of dates (days)
    # among timestamps (nanoseconds) would have its days written as nanoseconds
    _file(tmp_path / "t" / "a.parquet", ["a", "a"], other, pa.array([1.0, 2.0]))
    _file(tmp_path / "t" / "b.parquet", ["b", "b"], _days(0, 2, "ns"), pa.array([3.0, 4.0]))
    with pytest.raises(InvalidTable, match=f"'ds' holds {words} without a zone in .*b.parquet"):
        TableSource(tmp_path / "t").check()


def test_ids_that_are_numbers_in_one_file_and_text_in_another_come_out_as_text(
        tmp_path: Path) -> None:
    _file(tmp_path / "t" / "a.parquet", [1, 1], _days(0, 2, "ns"), pa.array([1.0, 2.0]))
    _file(tmp_path / "t" / "b.parquet", ["x", "x"], _days(0, 2, "ns"), pa.array([3.0, 4.0]))
    info = TableSource(tmp_path / "t").check()
    assert info.id_type == pa.string() and info.series == 2
    _file(tmp_path / "i" / "a.parquet", pa.array([1], pa.int32()), _days(0, 1, "ns"),
          pa.array([1.0]))
    _file(tmp_path / "i" / "b.parquet", pa.array([2], pa.int64()), _days(0, 1, "ns"),
          pa.array([2.0]))
    assert TableSource(tmp_path / "i").check().id_type == pa.int64()


@pytest.mark.parametrize(("ids", "times", "words"), [
    (["a"], _days(150_000, 1, "s"), "a time outside 1677-09-21 to 2262-04-11"),
    (pa.array([b"\xff\xfe"], pa.binary()), _days(0, 1, "ns"), "an id that is not UTF-8"),
])
def test_times_past_2262_and_ids_that_are_not_text_get_one_line(
        tmp_path: Path, ids: object, times: pa.Array, words: str) -> None:
    path = _file(tmp_path / "t.parquet", ids, times, pa.array([1.0]))  # type: ignore[arg-type]
    with pytest.raises(InvalidTable, match=words):
        TableSource(path).check()


def test_a_csv_whose_first_rows_are_integers_or_empty_is_read_as_numbers(
        tmp_path: Path) -> None:
    # pyarrow guesses a CSV column's type from its first block (1 MB): integers, then one
    # decimal far down; empty cells first, then values
    rows = ["unique_id,ds,y", *(f"s{i // 50:05d},{i % 50},{i}" for i in range(60_000)),
            "zz,0,", "zz,1,30.5"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    got = _read_all(TableSource(tmp_path / "t.csv"))
    assert len(got) == 1201 and got["s00000"][:2] == [0.0, 1.0]
    assert np.isnan(got["zz"][0]) and got["zz"][1] == 30.5



def test_a_csv_id_that_reads_like_a_missing_value_is_an_id(tmp_path: Path) -> None:
    # pyarrow reads NA, null, nan... as missing by default; an id is text, whatever it says.
    # In the value column those words are missing values, as an empty cell is.
    ids = ["NA", "null", "nan", "#N/A", "N/A", "None"]
    rows = ["unique_id,ds,y", *(f"{sid},{day},{day + 1}" for sid in ids for day in range(3)),
            "x,0,NA", "x,1,", "x,2,nan", "x,3, null ", "x,4,7.5"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    got = _read_all(TableSource(tmp_path / "t.csv"))
    assert {sid: got[sid] for sid in ids} == {sid: [1.0, 2.0, 3.0] for sid in ids}
    assert np.isnan(got["x"][:4]).all() and got["x"][4] == 7.5

def test_hidden_files_beside_a_folder_s_data_are_not_read(tmp_path: Path) -> None:
    for folder in ("t/_tmp", "t/more"):
        (tmp_path / folder).mkdir(parents=True)
    write_parquet(random_walks(3, 10), tmp_path / "t" / "part-0.parquet")
    write_parquet(random_walks(3, 10), tmp_path / "t" / ".part-0.parquet")  # an editor's copy
    write_parquet(random_walks(3, 10), tmp_path / "t" / "_tmp" / "part-0.parquet")
    (tmp_path / "t" / "_SUCCESS").write_text("")
    write_parquet(random_walks(2, 10, seed=9), tmp_path / "t" / "more" / "PART-1.PARQUET")
    source = TableSource(tmp_path / "t")
    assert [p.name for p in source.files] == ["PART-1.PARQUET", "part-0.parquet"]


def test_a_write_the_disk_refuses_is_one_error_and_leaves_no_temporary_file(
        tmp_path: Path) -> None:
    with pytest.raises(OutputUnwritable, match=r"cannot write .*gone.*; free space"):
        _write_atomic(pa.table({"x": [1]}), tmp_path / "gone" / "chunk-00000000.arrow")
    taken = tmp_path / "chunk-00000000.arrow"  # written aside, then the rename is refused
    (taken / "in-the-way").mkdir(parents=True)
    with pytest.raises(OutputUnwritable, match=r"cannot write .*chunk-00000000\.arrow \("):
        _write_atomic(pa.table({"x": [1]}), taken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk-00000000.arrow"]


def test_a_failures_file_a_user_removed_counts_none(tmp_path: Path) -> None:
    output = TableOutput(tmp_path / "o.parquet", {"input": "t"})
    output.done_chunks()
    output.write_chunk(0, pa.table({"unique_id": ["a"], "x": [1.0]}), FAILURES_SCHEMA.empty_table())
    output.finish(pa.schema([("unique_id", pa.string()), ("x", pa.float64())]), [0])
    assert output.finished() and output.failure_counts() == (0, 0)
    output.failures.unlink()
    assert output.finished() and output.failure_counts() == (0, 0)


def test_a_second_run_to_the_same_output_is_refused_at_once(tmp_path: Path) -> None:
    # two runs to one OUT each joined the same parts, the later over the file the first had
    # finished (an unreadable Parquet, and exit 0 from one of them)
    table = write_parquet(random_walks(20, 30), tmp_path / "t.parquet")
    out = tmp_path / "o.parquet"
    with open(tmp_path / ".o.parquet.lock", "w") as lock:  # what a run holds while it runs
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = run_cli("send-tasks", "--input", str(table), "--output", str(out), "--model",
                       "naive", timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"crypto-ml: error: --output {out}: another run is writing it now; wait for it to end,"
        " or choose another --output"]
    assert not out.exists() and not (tmp_path / ".o.parquet.parts").exists()


def test_one_column_named_for_two_roles_is_refused_before_any_work(tmp_path: Path) -> None:
    # a CSV read id and time from one column: a KeyError deep in pyarrow, a 500 from the API
    random_walks(3, 10).to_csv(tmp_path / "t.csv", index=False)
    done = run_cli("send-tasks", "--input", str(tmp_path / "t.csv"), "--output",
                   str(tmp_path / "o.parquet"), "--id-col", "ds", timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "crypto-ml: error: the id, time and value columns must be three different columns; "
        "got 'ds', 'ds' and 'y' (--id-col, --time-col, --value-col)"], done.stderr
    with pytest.raises(InvalidTable, match="three different columns"):
        Columns("y", "ds", "y")


def test_iso_times_with_a_zone_written_as_text_are_read_as_in_a_csv(tmp_path: Path) -> None:
    times = ["2020-01-01T00:00:00Z", "2020-01-02T01:00:00+01:00", "2020-01-03T00:00:00Z"]
    path = _file(tmp_path / "t.parquet", ["a"] * 3, pa.array(times), pa.array([1.0, 2.0, 3.0]))
    assert _read_all(TableSource(path)) == {"a": [1.0, 2.0, 3.0]}
    pacsv.write_csv(pa.table({"unique_id": ["a"] * 3, "ds": times, "y": [1.0, 2.0, 3.0]}),
                     tmp_path / "t.csv")
    parquet, csv = TableSource(path), TableSource(tmp_path / "t.csv")
    assert parquet.check().time_kind == csv.check().time_kind == "timestamp"
    assert [c.last_time.tolist() for c in parquet.chunks(5)] == \
        [c.last_time.tolist() for c in csv.chunks(5)]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_times_with_and_without_a_zone_mixed_are_named_as_such(tmp_path: Path,
                                                                suffix: str) -> None:
    times = ["2021-01-01T00:00:00Z", "2021-01-02T00:00:00Z", "2021-01-01", "2021-01-02"]
    table = pa.table({"unique_id": ["a", "a", "b", "b"], "ds": times, "y": [1.0, 2.0, 3.0, 4.0]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    with pytest.raises(InvalidTable) as refused:
        TableSource(path).check()
    assert "mixes times with a zone ('2021-01-01T00:00:00Z', series 'a') and without one " \
        "('2021-01-01', series 'b'); give every time a zone, or none" in str(refused.value)


def test_an_output_in_the_input_folder_is_refused_leaving_nothing_there(tmp_path: Path) -> None:
    # the refusal came after the lock file was made beside OUT, in the user's data folder
    folder = tmp_path / "t"
    folder.mkdir()
    write_parquet(random_walks(2, 30), folder / "a.parquet")
    run = run_cli("send-tasks", "--input", str(folder), "--output", str(folder / "o.parquet"),
                  "--model", "naive", timeout=120)
    assert run.returncode == 2 and "lies in the --input table" in run.stderr, run.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet"]


@pytest.mark.parametrize("which", ["out.parquet", "out.failures.parquet"])
def test_an_output_that_is_a_pipe_is_refused_not_waited_on(tmp_path: Path, which: str) -> None:
    """OUT as a FIFO: reading it to see whether it held this run waited for a writer for
    good, through Ctrl-C and SIGTERM (an outside probe)."""
    os.mkfifo(tmp_path / which)
    with pytest.raises(ConfigError, match=f"{which} is neither a file nor a folder"):
        TableOutput(tmp_path / "out.parquet", {"input": "x"})
