"""Table runs' pure parts, in-process: the vectorised models, the table reader, the wire
format of a chunk, future dates and the resumable output."""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from table_support import random_walks, write_parquet

import crypto_ml.data.table as table_module
import crypto_ml.dispatch.table_output as table_output_module
from crypto_ml.cli.requests import check_table_output
from crypto_ml.core.errors import (
    ConfigError,
    CryptoMLError,
    InvalidTable,
    InvalidTaskInput,
    OutputMismatch,
    TaskTimedOut,
    UnknownModel,
)
from crypto_ml.core.settings import Settings
from crypto_ml.data.ahead import read_ahead
from crypto_ml.data.steps import future_times
from crypto_ml.data.table import Columns, SeriesChunk, TableSource
from crypto_ml.data.table_checks import id_order, same_as_next
from crypto_ml.dispatch.frames import _arrow_table, forecast_frame
from crypto_ml.dispatch.table_output import (
    FAILURES_SCHEMA,
    TableOutput,
    failures_path,
    held,
)
from crypto_ml.dispatch.table_run import TablePlan, TableSummary, chunk_table
from crypto_ml.models import REGISTRY, get_model
from crypto_ml.models.batch import predict_batch, vectorised
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.chunks import FILLED, chunk_kwargs, column, parse_chunk, run_chunk

LEVELS = (80.0, 95.0)


def _series(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [100 * np.exp(np.cumsum(rng.normal(0, 0.03, n))) for n in [120] * 40 + [60] * 10]
    out += [np.array([5.0]), np.array([3.0, 4.0]), 50 + np.arange(25.0)]  # short ones
    with_gap = out[3].copy()
    with_gap[7] = np.nan
    non_positive = out[4].copy()
    non_positive[0] = -1.0
    return [*out, with_gap, non_positive, np.array([np.nan, np.nan])]


@pytest.mark.parametrize("name", ["naive", "linear", "ets", "theta"])
def test_a_batch_gives_each_series_what_the_model_alone_gives(name: str) -> None:
    """The contract of table runs: the numbers of ``get_model(name).fit(s).predict(h)``,
    vectorised or not, with each failure where the one-series path fails."""
    series = _series() if name in ("naive", "linear") else _series()[:6] + _series()[-4:]
    batch = predict_batch(REGISTRY[name], series, 10, LEVELS)
    for row, values in enumerate(series):
        try:
            alone = get_model(name).fit(values).predict(10, LEVELS)
        except (ValueError, ArithmeticError) as exc:
            assert row in batch.errors and type(exc).__name__ in batch.errors[row]
            assert np.isnan(batch.forecast[row]).all()
            continue
        assert row not in batch.errors
        np.testing.assert_allclose(batch.forecast[row], alone.forecast, rtol=1e-9)
        for key, (lower, upper) in alone.bands.items():
            np.testing.assert_allclose(batch.bands[key][0][row], lower, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(batch.bands[key][1][row], upper, rtol=1e-9, atol=1e-9)


def test_the_cheap_models_are_vectorised_and_the_rest_are_not() -> None:
    assert {name for name, cls in REGISTRY.items() if vectorised(cls)} == {"naive", "linear"}


def test_no_band_of_a_positive_series_goes_below_zero() -> None:
    crash = np.concatenate([np.full(60, 100.0), 100 * 0.5 ** np.arange(1, 30)])
    for name in ("naive", "linear"):
        alone = get_model(name).fit(crash).predict(30, LEVELS)
        batch = predict_batch(REGISTRY[name], [crash], 30, LEVELS)
        for lower, _ in [*alone.bands.values(), *batch.bands.values()]:
            assert (np.asarray(lower) >= 0).all(), name


def test_a_chunk_crosses_the_wire_as_bytes_and_comes_back_per_model() -> None:
    series = _series()[:5]
    lengths = np.array([len(s) for s in series])
    kwargs = chunk_kwargs(TablePlan.of(["naive", "linear"], 7, LEVELS).models, 7, LEVELS,
                          lengths, np.concatenate(series))
    assert isinstance(kwargs["values"], bytes)
    result = run_chunk(parse_chunk(kwargs, 365, 100_000), "w1")
    assert result["rows"] == 5 and result["errors"] == []
    assert set(result["forecasts"]["linear"]) == {"mean", "lo-80", "hi-80", "lo-95", "hi-95"}
    assert len(result["forecasts"]["naive"]["mean"]) == 5 * 7
    alone = get_model("linear").fit(series[2]).forecast(7)
    np.testing.assert_allclose(result["forecasts"]["linear"]["mean"][14:21], alone, rtol=1e-9)
    binary = run_chunk(parse_chunk(kwargs, 365, 100_000), "w1", binary=True)  # msgpack results
    assert isinstance(binary["forecasts"]["linear"]["hi-95"], bytes)
    for name, values in result["forecasts"]["linear"].items():
        np.testing.assert_array_equal(column(binary["forecasts"]["linear"][name]), values)


@pytest.mark.parametrize(("change", "problem"), [
    ({"values": [1.0, 2.0]}, "float64 bytes"),
    ({"values": b"\x00" * 12}, "float64 bytes"),
    ({"lengths": [3, 4]}, "add up to"),
    ({"lengths": [True]}, "lengths"),
    ({"models": [{"model": "os.system", "params": {}, "max_points": 0}]}, "unknown model"),
    ({"models": [{"model": "naive", "params": {"epochs": 3}, "max_points": 0}]}, "does not take"),
    ({"horizon": 10**9}, "horizon"),
    ({"fallback": "naive"}, "'fallback' must be"),
    ({"fallback": {"model": "lstm2", "params": {}, "max_points": 0}}, "unknown model"),
])
def test_a_bad_chunk_is_refused_naming_the_argument(change: dict, problem: str) -> None:
    kwargs = chunk_kwargs(TablePlan.of(["naive"], 3, LEVELS).models, 3, LEVELS, np.array([2]),
                          np.array([1.0, 2.0]))
    with pytest.raises(InvalidTaskInput, match=problem):
        parse_chunk({**kwargs, **change}, 365, 100_000)


def test_a_fallback_model_fills_the_series_a_model_fails_on_and_says_so() -> None:
    good, negative, short = _series()[0], -_series()[1], np.array([2.0, 3.0])
    plan = TablePlan.of(["ets"], 4, LEVELS, fallback="naive")
    series = [good, negative, short, np.array([])]
    kwargs = chunk_kwargs(plan.models, 4, LEVELS, np.array([len(s) for s in series]),
                          np.concatenate(series), plan.fallback)
    result = run_chunk(parse_chunk(kwargs, 365, 100_000), "w1")
    ets = {k: np.asarray(v).reshape(4, 4) for k, v in result["forecasts"]["ets"].items()}
    alone = get_model("ets").fit(good).predict(4, LEVELS)
    np.testing.assert_allclose(ets["mean"][0], alone.forecast, rtol=1e-9)  # not filled
    for row, values in ((1, negative), (2, short)):
        naive = get_model("naive").fit(values).predict(4, LEVELS)
        np.testing.assert_allclose(ets["mean"][row], naive.forecast, rtol=1e-9)
        np.testing.assert_allclose(ets["lo-95"][row], naive.bands["95"][0], rtol=1e-9)
    assert np.isnan(ets["mean"][3]).all()
    reasons = {row: reason for row, model, reason in result["errors"]}
    assert reasons[1].startswith("filled by fallback naive: InvalidTaskInput: prices must be")
    assert reasons[2].startswith("filled by fallback naive: SeriesTooShort")
    assert "; the fallback naive failed too: " in reasons[3] and 0 not in reasons


def _chunks(source: TableSource, size: int) -> list[tuple[list[str], list[int], str]]:
    """Each chunk's ids, lengths and values (as text: NaN equals NaN)."""
    source.check()
    return [(c.ids, c.lengths.tolist(), repr(c.values.tolist())) for c in source.chunks(size)]


def test_chunks_are_the_same_whatever_the_batches_and_the_row_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = random_walks(37, 12)
    frame.loc[frame.index[5], "y"] = np.nan  # a missing close travels as NaN
    expected = _chunks(TableSource(write_parquet(frame, tmp_path / "a.parquet")), 5)
    assert [len(ids) for ids, _, _ in expected] == [5] * 7 + [2]
    assert expected[0][0][0] == "s000000" and expected[0][1] == [12] * 5
    monkeypatch.setattr(table_module, "BATCH_ROWS", 7)  # series cut across batches
    assert _chunks(TableSource(tmp_path / "a.parquet"), 5) == expected
    shuffled = frame.sample(frac=1.0, random_state=1)
    source = TableSource(write_parquet(shuffled, tmp_path / "b.parquet"))
    assert _chunks(source, 5) == expected
    assert source.info is not None and not source.info.presorted


def test_the_check_sees_across_batch_boundaries(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "BATCH_ROWS", 10)  # a batch is one whole series
    frame = random_walks(4, 10)
    info = TableSource(write_parquet(frame, tmp_path / "a.parquet")).check()
    assert (info.series, info.rows, info.presorted) == (4, 40, True)
    repeated = pd.concat([frame.iloc[:10], frame.iloc[[9]], frame.iloc[10:]])  # next batch's 1st
    with pytest.raises(InvalidTable, match="series 's000000' has two rows"):
        TableSource(write_parquet(repeated, tmp_path / "b.parquet")).check()
    swapped = pd.concat([frame.iloc[:10], frame.iloc[20:30], frame.iloc[10:20], frame.iloc[30:]])
    source = TableSource(write_parquet(swapped, tmp_path / "c.parquet"))
    assert _chunks(source, 3) == _chunks(TableSource(tmp_path / "a.parquet"), 3)
    assert source.info is not None and not source.info.presorted and source.info.series == 4
    # values stored as text in Parquet are still read and checked before any work
    text = frame.assign(y=frame["y"].astype(str).where(frame.index != 13, "12,5O"))
    with pytest.raises(InvalidTable, match=r"'12,5O' \(series 's000001'\)"):
        TableSource(write_parquet(text, tmp_path / "d.parquet")).check()


def test_ids_are_checked_as_text_however_parquet_stores_them(tmp_path: Path) -> None:
    frame = random_walks(4, 10)
    numbered = frame.assign(unique_id=frame["unique_id"].str[1:].astype(int))
    for name, table, dictionary in [("dict", frame, True), ("plain", frame, False),
                                    ("ints", numbered, True)]:
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path,
                       use_dictionary=dictionary)
        assert TableSource(path).check().series == 4
        doubled = pd.concat([table.iloc[:25], table.iloc[[24]], table.iloc[25:]])
        pq.write_table(pa.Table.from_pandas(doubled, preserve_index=False), path,
                       use_dictionary=dictionary)
        with pytest.raises(InvalidTable, match=r"series '(s00000)?2' has two rows"):
            TableSource(path).check()
    # a dictionary may hold one id twice: rows are then compared by their text
    ids = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 2]), pa.array(["a", "a", "b"]))
    assert same_as_next(ids).tolist() == [True, False, True]
    assert id_order(ids, np.array([1, 1, 1, 2]), None)[2] == "a"


def test_a_hive_folder_a_csv_and_integer_times_are_tables_too(tmp_path: Path) -> None:
    frame = random_walks(6, 10)
    frame["exchange"] = np.where(frame["unique_id"] < "s000003", "a", "b")
    for exchange, part in frame.groupby("exchange"):
        folder = tmp_path / "hive" / f"exchange={exchange}"
        folder.mkdir(parents=True)
        write_parquet(part.drop(columns="exchange"), folder / "part-0.parquet")
    hive = TableSource(tmp_path / "hive")
    assert hive.check().series == 6
    csv = tmp_path / "t.csv"
    frame.assign(ds=np.tile(np.arange(10), 6)).rename(columns={"y": "close"}).to_csv(csv, index=False)
    source = TableSource(csv, Columns(value="close"))
    info = source.check()
    assert (info.series, info.rows, info.time_kind) == (6, 60, "int")
    chunk = next(source.chunks(10))
    assert future_times("int", chunk.last_time, chunk.step, 3)[0][0].tolist() == [10, 11, 12]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: f.drop(columns="y"), "no column 'y'"),
    (lambda f: f.assign(y=f["y"].astype(str).where(f.index != 13, "12,5O")), "'12,5O' (series 's000001')"),
    (lambda f: f.assign(ds=f["ds"].astype(str).where(f.index != 21, "yesterday")), "'yesterday'"),
    (lambda f: pd.concat([f, f.iloc[[15]]]), "series 's000001' has two rows"),
    (lambda f: f.iloc[:0], "empty"),
])
def test_a_bad_table_is_named_before_any_work(tmp_path: Path, edit, message: str) -> None:
    path = tmp_path / "bad.csv"
    edit(random_walks(3, 10)).to_csv(path, index=False)
    with pytest.raises(InvalidTable, match=message.replace("(", r"\(").replace(")", r"\)")):
        TableSource(path).check()


def test_an_unreadable_file_in_a_dataset_is_named(tmp_path: Path) -> None:
    write_parquet(random_walks(2, 5), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InvalidTable, match=r"b\.parquet"):
        TableSource(tmp_path)


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _arrow(tmp_path: Path, name: str, **columns: object) -> Path:
    pq.write_table(pa.table(columns), tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: _arrow(d, "t.parquet", unique_id=["a"] * 3, ds=pa.array([1, 2, 3], pa.int64())
                      .cast(pa.duration("s")), y=[1.0, 2, 3]), "'ds' is of type duration"),
    (lambda d: _arrow(d, "t.parquet", unique_id=["a"] * 3, ds=[1, 2, 3], y=[[1.0]] * 3),
     "'y' is of type list"),
    (lambda d: _arrow(d, "t.parquet", unique_id=["a"] * 3, ds=[1, 2, 3], y=[True, False, True]),
     "'y' is of type bool"),
    (lambda d: _arrow(d, "t.parquet", unique_id=[["a"]] * 3, ds=[1, 2, 3], y=[1.0, 2, 3]),
     "'unique_id' is of type list"),
    (lambda d: _arrow(d, "t.parquet", unique_id=["", "", "b"], ds=[1, 2, 1], y=[1.0, 2, 3]),
     "empty id"),
    (lambda d: _arrow(d, "t.parquet", unique_id=["a"] * 3, ds=pa.array([1, 2, 2**63 + 5],
                                                                      pa.uint64()), y=[1.0, 2, 3]),
     "above the largest time"),
    (lambda d: _arrow(d, "t.parquet", unique_id=["a"] * 3, ds=["1", "2", "x"], y=[1.0, 2, 3]),
     "'ds' holds 'x'"),  # integers written as text, one not: that one is named
    (lambda d: _text(d / "empty.csv", ""), "cannot read the table"),
    (lambda d: _text(d / "r.csv", "unique_id,ds,y\na,1,1\na,2,2,extra\n"),
     "Expected 3 columns, got 4"),
])
def test_a_column_of_the_wrong_type_is_named_not_a_traceback(tmp_path: Path, make,
                                                               message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InvalidTable, match=message):
        source = TableSource(path)
        source.check()
        list(source.chunks(10))


def test_a_table_that_is_no_csv_is_refused_without_its_bytes(tmp_path: Path) -> None:
    """A Parquet file named .csv: pyarrow's words quote raw bytes of the file (NULs, control
    characters), which went into the one line and the API's 422 (an outside probe)."""
    write_parquet(random_walks(2, 30), tmp_path / "t.parquet")
    (tmp_path / "t.parquet").rename(tmp_path / "t.csv")
    with pytest.raises(InvalidTable, match="cannot read the table") as refused:
        TableSource(tmp_path / "t.csv").check()
    said = str(refused.value)
    assert said.isprintable() and "\ufffd" not in said and len(said) < 800


def test_a_pipe_given_as_the_table_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "t.parquet"
    os.mkfifo(fifo)  # opened for reading, it would wait for a writer for ever
    with pytest.raises(InvalidTable, match=r"t\.parquet: neither a file nor a folder \(a pipe"):
        TableSource(fifo)


def test_each_file_of_a_folder_is_checked_and_other_files_are_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    write_parquet(random_walks(2, 20), folder / "a.parquet")
    (folder / "README.txt").write_text("a table of two series")  # not a table: not read
    assert TableSource(folder).check().series == 2
    random_walks(1, 5).to_csv(folder / "c.csv", index=False)
    with pytest.raises(InvalidTable, match=r"both Parquet .* and CSV"):
        TableSource(folder)  # not the Parquet files alone, the CSV's series lost
    (folder / "c.csv").unlink()
    write_parquet(random_walks(1, 5).rename(columns={"y": "other"}), folder / "b.parquet")
    with pytest.raises(InvalidTable, match=r"b\.parquet has no column 'y'"):
        TableSource(folder)  # its rows are not read as missing closes


@pytest.mark.parametrize("header", [b"unique_id,ds,y,pr\xe9cis\n", b"\xff\xfeunique_id,ds,y,x\n"])
def test_a_table_whose_header_is_no_utf8_is_refused_in_a_line(tmp_path: Path,
                                                              header: bytes) -> None:
    # Latin-1, UTF-16: a UnicodeDecodeError traceback from Arrow's column names
    (tmp_path / "t.csv").write_bytes(header + b"".join(
        b"a,2020-01-%02d,%d,x\n" % (i, i) for i in range(1, 26)))
    with pytest.raises(InvalidTable, match="column names are not UTF-8 text"):
        TableSource(tmp_path / "t.csv").check()


@pytest.mark.parametrize("name", [b"f\xe9.parquet", b"k=caf\xe9/p.parquet"])
def test_a_file_whose_name_is_no_utf8_is_named_so(tmp_path: Path, name: bytes) -> None:
    # Arrow opens UTF-8 names alone: a UnicodeEncodeError traceback
    file = Path(os.fsdecode(bytes(tmp_path / "t") + b"/" + name))
    file.parent.mkdir(parents=True)
    write_parquet(random_walks(2, 20), tmp_path / "ok.parquet")
    (tmp_path / "ok.parquet").rename(file)
    shown = name.decode("utf-8", "backslashreplace").replace("\\", "\\\\")
    with pytest.raises(InvalidTable, match=f"{shown} in .*: its name is not UTF-8 text"):
        TableSource(tmp_path / "t")
    with pytest.raises(InvalidTable, match="its name is not UTF-8 text"):
        TableSource(file)  # given itself: its header was blamed


def test_hive_folders_keep_ids_as_text(tmp_path: Path) -> None:
    walk = random_walks(1, 20).drop(columns="unique_id")
    for name, rows in (("007", walk.iloc[:10]), ("7", walk.iloc[10:])):
        (tmp_path / f"unique_id={name}").mkdir()
        write_parquet(rows, tmp_path / f"unique_id={name}" / "p.parquet")
    source = TableSource(tmp_path)
    info = source.check()
    assert (info.series, info.id_type) == (2, pa.string())  # not one series '7'
    assert [uid for chunk in source.chunks(10) for uid in chunk.ids] == ["007", "7"]


def test_large_integers_are_numbers_and_zones_are_kept(tmp_path: Path) -> None:
    frame = random_walks(2, 20).assign(y=lambda f: (f["y"] * 1e16).astype(np.int64))
    frame["ds"] = frame["ds"].dt.tz_localize("US/Eastern")
    source = TableSource(write_parquet(frame, tmp_path / "t.parquet"))
    assert source.check().time_zone == "US/Eastern"
    values = np.concatenate([chunk.values for chunk in source.chunks(10)])
    np.testing.assert_allclose(values, frame["y"].to_numpy(dtype=float))  # above 2**53 too
    schema = TablePlan.of(["naive"], 3, ()).schema("timestamp", "US/Eastern")
    assert schema.field("ds").type == pa.timestamp("ns", tz="US/Eastern")


def test_picked_ids_the_table_lacks_are_named(tmp_path: Path) -> None:
    table = write_parquet(random_walks(3, 10), tmp_path / "t.parquet")
    assert TableSource(table, only=["s000001"]).check().series == 1
    with pytest.raises(InvalidTable, match="has no series 'nothere'"):
        TableSource(table, only=["s000001", "nothere"]).check()
    with pytest.raises(InvalidTable, match="has no series 'S000001', 'nothere' "):  # none there
        TableSource(table, only=["S000001", "nothere"]).check()


def test_the_output_is_never_the_input_nor_in_its_folder(tmp_path: Path) -> None:
    table = write_parquet(random_walks(2, 10), tmp_path / "t.parquet")
    plan = TablePlan.of(["naive"], 3, ())
    with pytest.raises(ConfigError, match="is the --input table"):
        TableOutput(table, plan.describe(TableSource(table)), overwrite=True)
    assert table.exists()  # --overwrite deleted the user's table before
    with pytest.raises(ConfigError, match="lies in the --input table"):
        TableOutput(tmp_path / "o.parquet", plan.describe(TableSource(tmp_path)))


def test_a_folder_that_changed_is_another_input(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    write_parquet(random_walks(2, 10), folder / "a.parquet")
    plan = TablePlan.of(["naive"], 3, ())
    before = plan.describe(TableSource(folder))
    assert plan.describe(TableSource(folder)) == before
    write_parquet(random_walks(1, 10, start="2018-01-01"), folder / "b.parquet")
    after = plan.describe(TableSource(folder))
    assert after["input_files"] != before["input_files"]
    (folder / "b.parquet").rename(folder / "0.parquet")  # same files, another order
    assert plan.describe(TableSource(folder))["input_files"] != after["input_files"]


def test_future_dates_follow_each_series_own_step() -> None:
    day = lambda s: (pd.Timestamp(s) - pd.Timestamp("1970-01-01")).days  # noqa: E731
    last = np.array([day("2017-09-01"), day("2017-08-31"), day("2017-07-03")])
    step = np.array([1, 31, 7])
    got, beyond = future_times("date", last, step, 3)
    as_dates = [[str(pd.Timestamp(int(d), unit="D").date()) for d in row] for row in got]
    assert as_dates == [["2017-09-02", "2017-09-03", "2017-09-04"],
                        ["2017-09-30", "2017-10-31", "2017-11-30"],
                        ["2017-07-10", "2017-07-17", "2017-07-24"]]
    assert not beyond.any()


def _next_times(frame: pd.DataFrame, h: int = 4) -> dict[str, list[pd.Timestamp]]:
    """Each series' next ``h`` times as a table run computes them."""
    source = TableSource(pa.Table.from_pandas(frame, preserve_index=False))
    info = source.check()
    unit = "D" if info.time_kind == "date" else "ns"

    def stamp(t: int) -> pd.Timestamp:
        if info.time_zone:
            return pd.Timestamp(int(t), tz="UTC").tz_convert(info.time_zone)
        return pd.Timestamp(int(t), unit=unit)
    got = {}
    for chunk in source.chunks(100):
        times, _ = future_times(info.time_kind, chunk.last_time, chunk.step, h, chunk.business,
                                info.time_zone, chunk.anchor)
        got.update({uid: [stamp(t) for t in row] for uid, row in zip(chunk.ids, times, strict=True)})
    return got


def test_the_step_is_each_series_smallest_gap_and_weekdays_alone_are_business_days() -> None:
    def series(uid: str, dates: pd.DatetimeIndex) -> pd.DataFrame:
        return pd.DataFrame({"unique_id": uid, "ds": dates, "y": np.arange(1.0, len(dates) + 1)})
    daily = pd.date_range("2024-01-01", "2024-01-18").append(pd.DatetimeIndex(["2024-01-20"]))
    got = _next_times(pd.concat([
        series("a-gap", daily),  # a day missing before the last one: still daily
        series("b-monday", pd.bdate_range("2024-01-02", "2024-01-29")),
        series("c-wednesday", pd.bdate_range("2024-01-02", "2024-01-31") + pd.Timedelta("9.5h")),
        series("g-short-week", pd.bdate_range("2024-01-01", "2024-01-05")),  # Mon-Fri: daily
    ]))
    got |= _next_times(pd.concat([
        series("d-monthly", pd.date_range("2023-01-01", periods=12, freq="MS")),
        series("e-monthly", pd.date_range("2022-01-01", periods=12, freq="MS")),
        series("f-one-row", pd.DatetimeIndex(["2024-06-01"])),  # its chunk's usual step: monthly
    ]))
    want = {"a-gap": pd.date_range("2024-01-21", periods=4),
            "b-monday": pd.bdate_range("2024-01-30", periods=4),
            "c-wednesday": pd.bdate_range("2024-02-01", periods=4) + pd.Timedelta("9.5h"),
            "d-monthly": pd.date_range("2024-01-01", periods=4, freq="MS"),
            "f-one-row": pd.date_range("2024-07-01", periods=4, freq="MS"),
            "g-short-week": pd.date_range("2024-01-06", periods=4)}
    for uid, dates in want.items():
        assert got[uid] == list(dates), uid


def test_zoned_times_step_on_their_wall_clock() -> None:
    """Midnights in New York across the spring change of clocks are a day apart (not the
    23 hours between them in UTC); weekdays in Tokyo are business days there."""
    def series(uid: str, dates: pd.DatetimeIndex) -> pd.DataFrame:
        return pd.DataFrame({"unique_id": uid, "ds": dates, "y": np.arange(1.0, len(dates) + 1)})
    ny = _next_times(pd.concat([
        series("across", pd.date_range("2024-02-20", "2024-03-20", tz="America/New_York")),
        series("before", pd.date_range("2024-02-20", "2024-03-08", tz="America/New_York"))]))
    assert ny["across"] == list(pd.date_range("2024-03-21", periods=4, tz="America/New_York"))
    assert ny["before"] == list(pd.date_range("2024-03-09", periods=4, tz="America/New_York"))
    tokyo = _next_times(series("tokyo", pd.bdate_range("2024-01-02", "2024-01-31")
                               .tz_localize("Asia/Tokyo")))
    assert tokyo["tokyo"] == list(pd.bdate_range("2024-02-01", periods=4).tz_localize("Asia/Tokyo"))
    off_grid = pd.date_range("2024-01-01", periods=30).append(pd.DatetimeIndex(["2024-01-15 12:00"]))
    noon = _next_times(series("noon", off_grid.sort_values()))  # one row at noon: still daily
    assert noon["noon"][:2] == [pd.Timestamp("2024-01-31"), pd.Timestamp("2024-02-01")]


NY = "America/New_York"


@pytest.mark.parametrize(("dates", "expected"), [
    # 15-minute data ending in the hour New York repeats: on, 15 minutes at a time
    (pd.date_range("2024-11-03 00:00", "2024-11-03 06:15", freq="15min", tz="UTC").tz_convert(NY),
     pd.date_range("2024-11-03 06:30", periods=3, freq="15min", tz="UTC").tz_convert(NY)),
    # ... and across the hour it skips: no time twice
    (pd.date_range("2024-03-09 00:00", "2024-03-10 01:45", freq="15min", tz=NY),
     pd.date_range("2024-03-10 07:00", periods=3, freq="15min", tz="UTC").tz_convert(NY)),
    # daily with a row at noon and the last day but one missing: daily
    (pd.date_range("2024-01-01", periods=20).append(
        pd.DatetimeIndex(["2024-01-10 12:00", "2024-01-22"])).sort_values(),
     pd.date_range("2024-01-23", periods=3)),
    # monthly with the month before the last missing; monthly on the 30th; bimonthly
    (pd.date_range("2022-01-01", periods=24, freq="MS").delete(22),
     pd.date_range("2024-01-01", periods=3, freq="MS")),
    (pd.DatetimeIndex(["2023-10-30", "2023-11-30", "2023-12-30", "2024-01-30"]),
     pd.DatetimeIndex(["2024-02-29", "2024-03-30", "2024-04-30"])),
    # ... ending on April 30th (a month's end) or February 29th: still the 30th
    (pd.DatetimeIndex(["2024-01-30", "2024-02-29", "2024-03-30", "2024-04-30"]),
     pd.DatetimeIndex(["2024-05-30", "2024-06-30", "2024-07-30"])),
    (pd.DatetimeIndex(["2023-11-30", "2023-12-30", "2024-01-30", "2024-02-29"]),
     pd.DatetimeIndex(["2024-03-30", "2024-04-30", "2024-05-30"])),
    # month ends ending in February, and quarter ends: still months' ends
    (pd.DatetimeIndex(["2023-11-30", "2023-12-31", "2024-01-31", "2024-02-29"]),
     pd.DatetimeIndex(["2024-03-31", "2024-04-30", "2024-05-31"])),
    (pd.DatetimeIndex(["2023-03-31", "2023-06-30", "2023-09-30"]) + pd.Timedelta("18h"),
     pd.DatetimeIndex(["2023-12-31", "2024-03-31", "2024-06-30"]) + pd.Timedelta("18h")),
    (pd.date_range("2020-01-01", periods=10, freq="2MS"), pd.date_range("2021-09-01", periods=3,
                                                                         freq="2MS")),
])
def test_next_times_follow_the_grid_despite_gaps_off_grid_rows_and_clock_changes(
        dates: pd.DatetimeIndex, expected: pd.DatetimeIndex) -> None:
    frame = pd.DataFrame({"unique_id": "s", "ds": dates, "y": np.arange(1.0, len(dates) + 1)})
    assert _next_times(frame, 3)["s"] == list(expected)


def test_a_lone_saturday_among_business_days_goes_on_on_monday() -> None:
    got = _next_times(pd.DataFrame({
        "unique_id": ["a"] * 30 + ["lone"],
        "ds": [*pd.bdate_range("2024-01-01", periods=30), pd.Timestamp("2024-01-06")],
        "y": 1.0}), 3)
    assert got["lone"] == list(pd.bdate_range("2024-01-08", periods=3))


@pytest.mark.parametrize(("freq", "expected"), [
    ("MS", ["2002-07-01", "2002-08-01", "2002-09-01"]),
    ("ME", ["2002-07-31", "2002-08-31", "2002-09-30"]),
    ("QS", ["2007-07-01", "2007-10-01", "2008-01-01"]),
    ("YS", ["2030-01-01", "2031-01-01", "2032-01-01"]),
])
def test_timestamps_a_month_apart_step_in_calendar_months(freq: str, expected: list[str]) -> None:
    # pandas' datetime64 (what statsforecast users hold) as dates do: not 30.4-day steps
    start = {"MS": "2000-01-01", "ME": "2000-01-31", "QS": "2000-01-01", "YS": "2000-01-01"}
    times = pd.date_range(start[freq], periods=30, freq=freq).values.astype(np.int64)
    got, _ = future_times("timestamp", times[-1:], times[-1:] - times[-2:-1], 3)
    assert [str(pd.Timestamp(int(t)).date()) for t in got[0]] == expected


def test_times_past_the_largest_of_their_kind_are_failures_not_wrapped_around() -> None:
    largest = np.iinfo(np.int64).max
    late = pd.date_range("2262-03-01", periods=2).values.astype(np.int64)
    for kind, last, step in (("int", largest - 10, 1), ("timestamp", late[-1], late[1] - late[0]),
                             ("date", 2**31 - 100, 1)):
        got, beyond = future_times(kind, np.array([last, 0]), np.array([step, step]), 365)
        assert beyond.tolist() == [True, False] and (got[1] > 0).all()
    plan = TablePlan.of(["naive"], 365, (80.0,))
    chunk = SeriesChunk(0, ["late", "fine"], np.array([1, 1]), np.ones(2),
                        np.array([largest - 10, 5]), np.zeros(2, dtype=np.int64))
    result = {"errors": [], "forecasts": {"naive": {
        name: np.ones(2 * 365).tobytes() for name in ("mean", "lo-80", "hi-80")}}}
    rows, failures = chunk_table(plan, plan.schema("int"), "int", chunk, result)
    assert set(rows.column("unique_id").to_pylist()) == {"fine"}
    assert failures.column("unique_id").to_pylist() == ["late"]
    assert "TimeOutOfRange" in failures.column("error")[0].as_py()


def test_a_series_no_model_could_forecast_keeps_its_rows_as_nan() -> None:
    frame = pd.concat([random_walks(2, 30), random_walks(1, 1, seed=1).assign(unique_id="z-one")])
    source = TableSource(pa.Table.from_pandas(frame, preserve_index=False))
    kind = source.check().time_kind
    plan = TablePlan.of(["linear"], 3, LEVELS)
    [chunk] = list(source.chunks(10))
    kwargs = chunk_kwargs(plan.models, 3, LEVELS, chunk.lengths, chunk.values)
    rows, failures = chunk_table(plan, plan.schema(kind), kind, chunk,
                                 run_chunk(parse_chunk(kwargs, 365, 10**5), "w"))
    got = rows.to_pandas()
    assert got.groupby("unique_id").size().to_dict() == {"s000000": 3, "s000001": 3, "z-one": 3}
    assert got[got["unique_id"] == "z-one"]["linear"].isna().all()
    assert failures.column("unique_id").to_pylist() == ["z-one"]
    assert failures.column("error")[0].as_py().startswith("SeriesTooShort: the series has 1 ")


class _ScriptedEngine:
    """Stands in for the Dispatcher in a pure test of run_table's bookkeeping: a message that
    holds one of ``bad``'s series fails as a time limit makes it fail; with ``give_up``, the
    second pass ends after its first outcome, as a run that stopped waiting does."""

    bad: ClassVar[set[str]] = {"s1"}
    give_up = False

    def __init__(self, *args: object) -> None:
        pass

    def run(self, messages, timeout, max_in_flight=None, run_id=None):  # type: ignore[no-untyped-def]
        from celery import states

        from crypto_ml.dispatch.engine import Outcome
        for i, message in enumerate(messages):
            ids, h = message.kwargs["_ids"], message.kwargs["horizon"]
            if self.give_up and run_id is None and i >= 1:
                yield Outcome(message, "t", None)
                return
            if self.bad & set(ids):
                yield Outcome(message, "t", {"status": states.FAILURE,
                                             "result": TaskTimedOut.for_limit(1)})
                continue
            yield Outcome(message, "t", {"status": states.SUCCESS, "result": {
                "errors": [], "forecasts": {"naive": {"mean": [1.0] * len(ids) * h}}}})

    def forget_earlier(self, keys: object) -> None:
        pass


def _scripted(monkeypatch: pytest.MonkeyPatch, engine: type, frame: pd.DataFrame,
              chunk_series: int, out: Path, timeout: float) -> tuple[Any, list[Any]]:
    """``frame``'s naive forecasts (horizon 2) run into ``out`` with ``engine`` for the
    Dispatcher, each chunk's message labelled with its series' ids (``_ids``), which the
    scripted engines read: the run's summary and its progress calls."""
    import crypto_ml.dispatch.table_run as table_run

    sent = table_run._Run._message

    def labelled(run: object, chunk: SeriesChunk, key: int) -> object:
        message = sent(run, chunk, key)  # type: ignore[arg-type]
        message.kwargs["_ids"] = list(chunk.ids)
        return message
    monkeypatch.setattr(table_run._Run, "_message", labelled)
    monkeypatch.setattr(table_run, "Dispatcher", engine)
    source = TableSource(pa.Table.from_pandas(frame, preserve_index=False))
    source.check()
    plan = TablePlan.of(["naive"], 2, (), chunk_series=chunk_series)
    progress: list[Any] = []
    summary = table_run.run_table(None, source, TableOutput(out, plan.describe(source)),  # type: ignore[arg-type]
                                  plan, on_progress=lambda d, f: progress.append((d, f)),
                                  say=lambda line: None, timeout=timeout)
    return summary, progress


@pytest.mark.parametrize("give_up", [False, True])
def test_a_chunk_failing_whole_is_split_and_every_series_counted_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, give_up: bool) -> None:
    monkeypatch.setattr(_ScriptedEngine, "give_up", give_up)
    out = tmp_path / "o.parquet"
    summary, progress = _scripted(monkeypatch, _ScriptedEngine, random_walks(5, 4).assign(
        unique_id=lambda f: f["unique_id"].str.replace("s00000", "s")), 3, out, 5.0)
    done, failed = np.sum(progress, axis=0).tolist()
    if give_up:  # the split chunk's series never all came back: failed, counted once
        assert (done, failed) == (2, 3) and summary.chunks_failed[0].startswith("no result")
        assert not out.exists()
        return
    assert (done, failed) == (5, 1) and not summary.chunks_failed
    got = pd.read_parquet(out)
    assert got.groupby("unique_id").size().to_dict() == {f"s{i}": 2 for i in range(5)}
    assert got[got["unique_id"] == "s1"]["naive"].isna().all()
    failures = pd.read_parquet(tmp_path / "o.failures.parquet")
    assert failures["unique_id"].tolist() == ["s1"] and failures["error"][0].startswith(
        "TaskTimedOut")


class _GivingUpEngine(_ScriptedEngine):
    """Answers the first chunk, times out on the second and never sends the rest, as a run
    whose ``--timeout`` passed with no result does."""

    def run(self, messages, timeout, max_in_flight=None, run_id=None):  # type: ignore[no-untyped-def]
        from celery import states

        from crypto_ml.dispatch.engine import Outcome
        sent = iter(messages)
        first = next(sent)
        size = len(first.kwargs["_ids"]) * first.kwargs["horizon"]
        yield Outcome(first, "t", {"status": states.SUCCESS, "result": {
            "errors": [], "forecasts": {"naive": {"mean": [1.0] * size}}}})
        yield Outcome(next(sent), "t", None)


def test_chunks_a_timed_out_run_never_sent_are_counted_as_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o.parquet"
    summary, progress = _scripted(monkeypatch, _GivingUpEngine, random_walks(5, 4), 2, out, 1.0)
    assert np.sum(progress, axis=0).tolist() == [2, 3]  # every series counted, once
    assert sorted(summary.chunks_failed) == [1, 2] and not out.exists()
    assert summary.chunks_failed[1].startswith("no result within 1 s")
    assert summary.chunks_failed[2].startswith("not sent") and summary.retry_helps()


def _plan_and_rows(tmp_path: Path, numbered: bool = False
                   ) -> tuple[TablePlan, TableSource, list]:
    frame = random_walks(9, 40)
    if numbered:
        frame["unique_id"] = frame["unique_id"].str[1:].astype(int)
    source = TableSource(write_parquet(frame, tmp_path / "in.parquet"))
    info = source.check()
    plan = TablePlan.of(["naive"], 4, LEVELS, chunk_series=4)
    schema = plan.schema(info.time_kind)
    parts = []
    for chunk in source.chunks(plan.chunk_series):
        kwargs = chunk_kwargs(plan.models, 4, LEVELS, chunk.lengths, chunk.values)
        parts.append((chunk.index, *chunk_table(plan, schema, info.time_kind, chunk,
                                                run_chunk(parse_chunk(kwargs, 365, 10**5), "w"))))
    return plan, source, parts


def _written(out: Path, plan: TablePlan, source: TableSource, parts: list,
             ids: pa.DataType | None = None) -> None:
    """``parts`` written to ``out`` by one uninterrupted run."""
    output = TableOutput(out, plan.describe(source))
    output.done_chunks()
    for part in parts:
        output.write_chunk(*part)
    output.finish(plan.schema("date"), range(len(parts)), ids)


def test_a_ctrl_c_while_the_parts_are_joined_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an output-sized .OUT.parquet.<hex>.tmp stayed for ever: no run sweeps it
    plan, source, parts = _plan_and_rows(tmp_path)
    output = TableOutput(tmp_path / "o.parquet", plan.describe(source))
    output.done_chunks()
    for part in parts:
        output.write_chunk(*part)
    read = table_output_module._read_part
    seen = []

    def interrupted(part: Path) -> pa.Table:
        seen.append(part)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return read(part)

    monkeypatch.setattr(table_output_module, "_read_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        output.finish(plan.schema("date"), range(len(parts)))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(table_output_module, "_read_part", read)
    again = TableOutput(tmp_path / "o.parquet", plan.describe(source))
    assert again.done_chunks() == {p[0] for p in parts}  # and the rerun joins them
    again.finish(plan.schema("date"), range(len(parts)))
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 9 * 4


def test_an_interrupted_output_resumes_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    plan, source, parts = _plan_and_rows(tmp_path)
    schema = plan.schema("date")
    whole = TableOutput(tmp_path / "whole.parquet", plan.describe(source))
    assert whole.done_chunks() == set()
    for index, rows, failures in reversed(parts):  # chunks arrive in any order
        whole.write_chunk(index, rows, failures)
    whole.finish(schema, range(len(parts)))
    first = TableOutput(tmp_path / "again.parquet", plan.describe(source))
    first.done_chunks()
    first.write_chunk(*parts[1])
    second = TableOutput(tmp_path / "again.parquet", plan.describe(source))  # the rerun
    assert second.done_chunks() == {1}
    for part in (parts[0], parts[2]):
        second.write_chunk(*part)
    second.finish(schema, range(len(parts)))
    a, b = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(tmp_path / "again.parquet")
    assert a.equals(b) and a.num_rows == 9 * 4
    assert a.column_names[:5] == ["unique_id", "ds", "naive", "naive-lo-80", "naive-hi-80"]
    assert not (tmp_path / ".again.parquet.parts").exists()
    assert pq.read_table(tmp_path / "again.failures.parquet").num_rows == 0
    assert TableOutput(tmp_path / "again.parquet", plan.describe(source)).finished()


def test_a_stopped_run_s_parts_go_on_under_another_name_only_for_the_same_run(
        tmp_path: Path) -> None:
    """An API job resumed as another: its parts change name, and the joined table is the
    uninterrupted run's; parts of another run are refused, naming what differs."""
    plan, source, parts = _plan_and_rows(tmp_path)
    schema = plan.schema("date")
    _written(tmp_path / "whole.parquet", plan, source, parts)
    stopped = TableOutput(tmp_path / "old.parquet", plan.describe(source))
    stopped.done_chunks()
    index, rows, _ = parts[1]
    failed = pa.table({"unique_id": ["s000004"] * 2 + ["s000005"],
                       "model": ["naive", "linear", "naive"],
                       "error": ["x", "y", f"{FILLED}naive: z"]}, schema=FAILURES_SCHEMA)
    stopped.write_chunk(index, rows, failed)
    (stopped.parts / "failed-00000002.arrow").write_bytes(b"")  # a killed attempt's: no chunk
    five = TablePlan.of(["naive"], 5, LEVELS, chunk_series=4)
    other = TableOutput(tmp_path / "x.parquet", five.describe(source))
    with pytest.raises(OutputMismatch, match=r"^horizon$"):
        other.held_by(stopped)
    moved = {**plan.describe(source), "input_size": 1, "input_mtime": 2}
    with pytest.raises(OutputMismatch, match=r"^input contents$"):
        TableOutput(tmp_path / "y.parquet", moved).held_by(stopped)
    new = TableOutput(tmp_path / "new.parquet", plan.describe(source))
    assert new.held_by(stopped) and not new.held_by(other)
    first_run = stopped.run_id
    new.take_parts(stopped)
    assert new.done_chunks() == {1} and not stopped.parts.exists()
    assert new.run_id not in (None, first_run)  # the stopped run may yet end its own id
    assert new.failed_in(1) == 1 and new.failed_in(0) == 0  # series, not filled
    for part in (parts[0], parts[2]):
        new.write_chunk(*part)
    new.finish(schema, range(len(parts)))
    assert pq.read_table(tmp_path / "new.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))


def test_integer_ids_come_back_as_integers(tmp_path: Path) -> None:
    plan, source, parts = _plan_and_rows(tmp_path, numbered=True)
    assert source.info is not None and source.info.id_type == pa.int64()
    _written(tmp_path / "o.parquet", plan, source, parts, source.info.id_type)
    got = pq.read_table(tmp_path / "o.parquet")
    assert got.schema.field("unique_id").type == pa.int64()
    assert got.column("unique_id").to_pylist() == sorted(np.repeat(np.arange(9), 4).tolist())
    failures = pq.read_schema(tmp_path / "o.failures.parquet")
    assert failures.field("unique_id").type == pa.int64()


def test_the_same_output_for_another_run_is_refused_naming_the_difference(tmp_path: Path) -> None:
    plan, source, parts = _plan_and_rows(tmp_path)
    out = TableOutput(tmp_path / "o.parquet", plan.describe(source))
    out.done_chunks()
    out.write_chunk(*parts[0])
    other = TablePlan.of(["naive"], 5, LEVELS, chunk_series=4)
    with pytest.raises(OutputMismatch, match="--horizon was 4, now 5"):
        TableOutput(tmp_path / "o.parquet", other.describe(source)).done_chunks()
    finished = TableOutput(tmp_path / "f.parquet", plan.describe(source))
    finished.done_chunks()
    for part in parts:
        finished.write_chunk(*part)
    finished.finish(plan.schema("date"), range(len(parts)))
    (tmp_path / ".f.parquet.parts").mkdir()  # a Ctrl-C in the parts' removal left some
    (tmp_path / ".f.parquet.parts" / "manifest.json").write_text(json.dumps(
        plan.describe(source)))
    assert TableOutput(tmp_path / "f.parquet", plan.describe(source)).finished()  # not resumed
    afresh = TableOutput(tmp_path / "o.parquet", other.describe(source), overwrite=True)
    assert not afresh.finished() and (tmp_path / ".o.parquet.parts").is_dir()  # till it runs
    assert afresh.done_chunks() == set()
    manifest = json.loads((tmp_path / ".o.parquet.parts" / "manifest.json").read_text())
    assert manifest["horizon"] == 5


def test_an_output_no_run_wrote_is_named_so_and_kept(tmp_path: Path) -> None:
    plan, source, _ = _plan_and_rows(tmp_path)
    foreign = tmp_path / "theirs.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(OutputMismatch, match="no crypto-ml table run wrote") as refused:
        TableOutput(foreign, plan.describe(source)).finished()
    assert "holds another run" not in str(refused.value)
    assert pq.read_table(foreign).column("x").to_pylist() == [1, 2]


def test_a_run_over_every_close_is_said_as_all_closes(tmp_path: Path) -> None:
    plan, source, parts = _plan_and_rows(tmp_path)
    _written(tmp_path / "o.parquet", plan, source, parts)
    every = TablePlan.of(["naive", "linear"], 4, LEVELS, max_points=0, chunk_series=4)
    with pytest.raises(OutputMismatch, match=r"now naive \(all closes\),linear \(all closes\)"):
        TableOutput(tmp_path / "o.parquet", every.describe(source)).finished()


@pytest.mark.parametrize("name", ["out.json", "no-such-folder/out.parquet",
                                  # the failures table of report.parquet: its run replaced
                                  # these forecasts without a word
                                  "report.failures.parquet", "R.Failures.PARQUET"])
def test_an_output_is_checked_before_any_work(tmp_path: Path, name: str) -> None:
    with pytest.raises(Exception, match="--output"):
        check_table_output(tmp_path / name)
    assert not (tmp_path / "no-such-folder").exists()


def test_one_run_at_a_time_holds_an_output_and_a_lockless_file_system_runs_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "o.parquet"
    with held(out), pytest.raises(ConfigError, match="another run is writing it now"), held(out):
        pass
    assert failures_path(out) == tmp_path / "o.failures.parquet"

    def no_locks(fd: int, how: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # NFS without lockd: every run had failed
    with held(out):
        pass
    assert "runs unlocked, its file system takes no lock (No locks available)" in caplog.text


def test_a_series_written_as_none_is_missing_not_a_crash(tmp_path: Path) -> None:
    frame = random_walks(2, 30)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(2, "y", pa.array([None] * 30 + frame["y"][30:].tolist(), pa.float64()))
    source = TableSource(table)
    source.check()
    chunk = next(source.chunks(10))
    result = run_chunk(parse_chunk(chunk_kwargs(TablePlan.of(["naive"], 3, ()).models, 3, (),
                                                chunk.lengths, chunk.values), 365, 10**5), "w")
    assert [row for row, _, _ in result["errors"]] == [0]


def test_a_broker_that_refuses_a_message_is_not_waited_for() -> None:
    """kombu raises OperationalError both when Redis is away (wait for it) and when it
    answers no (``OOM command not allowed``, ``NOPERM``: say so and stop)."""
    import redis
    from kombu.exceptions import OperationalError

    from crypto_ml.dispatch.broker_errors import transient

    def wrapped(cause: BaseException) -> OperationalError:
        try:
            try:
                raise cause
            except redis.RedisError as exc:
                raise OperationalError(str(exc)) from exc
        except OperationalError as outer:
            return outer

    assert transient(wrapped(redis.ConnectionError("Connection refused")))
    assert not transient(wrapped(redis.OutOfMemoryError("OOM command not allowed when used "
                                                         "memory > 'maxmemory'")))
    assert not transient(wrapped(redis.exceptions.NoPermissionError("NOPERM")))


def test_reading_ahead_raises_what_reading_raised_and_ends_with_its_reader() -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise OSError("the disk went away")

    got = read_ahead(broken())
    assert next(got) == 1
    with pytest.raises(OSError, match="the disk went away"):
        next(got)
    endless = read_ahead(itertools.count(1))
    assert [next(endless) for _ in range(3)] == [1, 2, 3]
    endless.close()  # the caller stops early: the thread does not read on forever
    wait_until(lambda: not any(t.name == "crypto-ml-read-ahead" for t in threading.enumerate()),
               5, "the read-ahead thread ending")


def test_picked_series_and_a_table_that_changed_after_its_check(tmp_path: Path) -> None:
    frame = random_walks(5, 8)
    path = write_parquet(frame, tmp_path / "t.parquet")
    picked = TableSource(path, only=["s000003", "s000001"])
    picked.check()
    [chunk] = list(picked.chunks(10))
    assert chunk.ids == ["s000001", "s000003"] and chunk.lengths.tolist() == [8, 8]
    want = frame[frame["unique_id"].isin(chunk.ids)]["y"].to_numpy()
    assert chunk.values.tolist() == want.tolist()
    source = TableSource(path)
    source.check()
    write_parquet(frame.iloc[:-3], path)  # rewritten between the check and the run
    with pytest.raises(InvalidTable, match="holds fewer rows than when it was checked"):
        list(source.chunks(2))


@pytest.mark.parametrize(("given", "raised", "says"), [
    ({"horizon": 0}, InvalidTaskInput, "horizon must be a positive integer, got 0"),
    ({"df": [1, 2]}, CryptoMLError, "expected a long-format pandas DataFrame or a table's path"),
    ({"df": "empty"}, InvalidTable, "the frame: the table is empty"),
    ({"df": "no-y"}, CryptoMLError, "the frame has no column 'y'"),
    ({"df": "mixed-y"}, CryptoMLError, "the frame's column 'y' cannot be read"),
    ({"df": "timedelta-ds"}, ValueError, "the frame: column 'ds' is of type duration"),
    ({"df": "two-rows"}, ValueError, "the frame: series 'a' has two rows at the same 'ds'"),
    ({"df": "two-ys"}, CryptoMLError, "the frame has 2 columns named 'y'; keep one"),
    ({"df": "indexed"}, CryptoMLError, "'unique_id' is the frame's index: pass df.reset_index()"),
    ({"df": "nosuch.parquet"}, InvalidTable, "table 'nosuch.parquet': no such file or folder"),
    ({"h": 3}, ConfigError, "forecast() takes horizon=, not h= (got h=, statsforecast's word)"),
    ({"level": [90]}, ConfigError, "forecast() takes levels=, not level="),
    ({"freq": "D"}, ConfigError, "reads each series' step off its times"),
    ({"model": [type("Naive", (), {})()]}, UnknownModel, "models are named, as 'naive' or "
     "'naive,ets', got Naive (statsforecast's Naive is 'naive' here)"),
    ({"model": "AutoETS"}, UnknownModel, "(statsforecast's AutoETS is 'ets' here)"),
    ({"horizon": np.int64(400)}, ConfigError, "horizon must be at most 365 "
     "(CRYPTO_ML_MAX_HORIZON), got 400"),
    ({"max_ponts": 50}, ConfigError, "forecast() got max_ponts: naive does not take it; it "
     "takes no option"),
    ({"max_points": -5}, CryptoMLError, "max_points must be a whole number of closes"),
    ({"model": "lstm", "epochs": 10**6}, ConfigError, "model 'lstm': epochs must be an integer "
     "from 1 to 1000"),
])
def test_forecast_refuses_a_bad_call_before_any_cluster_starts(
        given: dict[str, object], raised: type[Exception], says: str) -> None:
    frame = pd.DataFrame({"unique_id": ["a"] * 30, "ds": range(30), "y": np.arange(1.0, 31.0)})
    frames = {"empty": frame.iloc[:0], "no-y": frame.drop(columns="y"),
              "mixed-y": frame.assign(y=frame["y"].astype(object).where(frame.index != 3, "x")),
              "timedelta-ds": frame.assign(ds=pd.to_timedelta(frame["ds"], unit="D")),
              "two-rows": pd.concat([frame, frame.iloc[[4]]]),
              "two-ys": pd.concat([frame, frame[["y"]]], axis=1),
              "indexed": frame.set_index("unique_id")}
    df = given.get("df", frame)
    options = {k: v for k, v in given.items() if k != "df"}
    settings = Settings(broker_url="redis://127.0.0.1:1/0")  # nothing listens: never reached
    with pytest.raises(raised) as error:
        forecast_frame(frames.get(df, df) if isinstance(df, str) else df, settings,
                       **options)  # type: ignore[arg-type]
    assert says in str(error.value) and "\n" not in str(error.value)


def test_a_table_path_missing_a_column_names_forecast_s_options(tmp_path: Path) -> None:
    path = write_parquet(random_walks(2, 10).rename(columns={"y": "close"}), tmp_path / "t.parquet")
    settings = Settings(broker_url="redis://127.0.0.1:1/0")  # nothing listens: never reached
    with pytest.raises(InvalidTable) as error:
        forecast_frame(str(path), settings)
    assert "no column 'y' (it has unique_id, ds, close); name yours with id_col, time_col and " \
        "target_col" in str(error.value)


def test_a_frame_of_periods_is_read_as_their_start_times() -> None:
    frame = pd.DataFrame({"unique_id": ["a"] * 3, "ds": pd.period_range("2017-09-01", periods=3,
                                                                       freq="D"), "y": [1.0, 2, 3]})
    source = TableSource(_arrow_table(frame, ["unique_id", "ds", "y"]))
    assert source.check().time_kind == "timestamp"
    last = next(source.chunks(1)).last_time[0]
    assert pd.Timestamp(int(last)) == pd.Timestamp("2017-09-03")


def test_a_chunk_refused_as_invalid_is_not_worth_running_again() -> None:
    invalid = "InvalidTaskInput: invalid table chunk: 'horizon' must be an integer between 1 and 365"
    assert not TableSummary(2, chunks_failed={0: invalid}).retry_helps()
    assert TableSummary(2, chunks_failed={0: invalid, 1: "no result within 60 s"}).retry_helps()
    assert TableSummary(2, chunks_failed={0: "WorkerLostError: the pool process died"}).retry_helps()


def test_quiet_still_says_where_the_failures_are(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from crypto_ml.cli.table import say_summary

    caplog.set_level("WARNING", logger="crypto_ml.console")  # what -q leaves
    say_summary(TableSummary(3, done=3, failures=1), tmp_path / "o.parquet")
    assert [r.getMessage() for r in caplog.records] == [
        f"wrote {tmp_path / 'o.parquet'} and {tmp_path / 'o.failures.parquet'} "
        "(1 failed forecast(s))"]


def test_a_table_run_s_messages_in_flight_follow_the_workers_that_beat_of_late() -> None:
    from crypto_ml.dispatch.capacity import Sizing, default_in_flight, live_slots
    from crypto_ml.worker.app import table_queue

    now = time.time()

    class Beats:  # what HGETALL crypto_ml:slots answers
        def hgetall(self, key: str) -> dict[bytes, bytes]:
            assert key == "crypto_ml:slots"
            return {b"w1": f"2 {now - 1} cpu,gpu".encode(), b"w2": f"3 {now - 2} cpu".encode(),
                    b"gpu": f"1 {now - 1} gpu".encode(), b"gone": f"8 {now - 300} cpu".encode(),
                    b"odd": b"not a beat", b"bytes": b"\xff\xfe"}

    assert live_slots(Beats(), "cpu") == 5 and live_slots(Beats(), "gpu") == 3
    assert table_queue(["linear", "theta"]) == "cpu" and table_queue(["naive", "lstm"]) == "gpu"
    assert [default_in_flight(n) for n in (0, 1, 2, 5)] == [4, 4, 4, 10]
    window = Sizing(4, per_slot=1, least=1, every=60)  # the API's coalescing window
    assert window.due() and not window.due()  # read at most every 60 s
    assert window.learn(0) == 4 and window.learn(3) == 3 and window.learn(0) == 3
