"""CryptoLoader on the real data set and on small files with every quirk of real exports."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypto_ml.core.errors import CoinNotFound, ConfigError, CryptoMLError, DataNotFound
from crypto_ml.data.loader import CryptoLoader, dropped_rows
from crypto_ml.data.parsing import coin_id

HEADER = "Date,Open,High,Low,Close,Volume,Market Cap"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


# --- the real data set -------------------------------------------------------------------------


pytest_real = pytest.mark.integration  # reads the real set (skipped, and said so, without it)


@pytest_real
def test_bitcoin_prices_match_the_published_series(real_data: Path) -> None:
    prices = CryptoLoader(real_data).get_prices("bitcoin")
    assert prices.dtype == np.float64
    np.testing.assert_array_equal(prices[:3], [134.21, 144.54, 139.0])
    np.testing.assert_array_equal(prices[-3:], [3905.95, 3631.04, 3630.7])
    # one close per data row of the file (the shared README's 1,608 counts newlines: 1,609 rows)
    rows = (real_data / "Bitcoin.csv").read_text().strip().count("\n")
    assert len(prices) == rows == 1609


@pytest_real
def test_every_coin_file_loads_and_the_ranking_file_is_skipped(real_data: Path,
                                                               caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    caplog.set_level(logging.WARNING)
    names = CryptoLoader(real_data).get_crypto_names()
    assert len(names) == 100 and names == sorted(names)
    assert "bitcoin_cash" in names and "i-o_coin" in names and "100_list" not in names
    assert any("100 List.csv" in r.getMessage() for r in caplog.records)


@pytest_real
def test_real_quirks_are_parsed(real_data: Path) -> None:
    loader = CryptoLoader(real_data)
    monero = loader.get_df("monero")
    assert pd.Timestamp("2015-03-30") in set(monero["Date"])  # spreadsheet serial 42093
    dash = loader.get_df("dash")
    assert pd.Timestamp("2017-06-04") in set(dash["Date"])  # "June 4, 2017"
    btc = loader.get_df("Bitcoin")
    assert btc["Date"].is_monotonic_increasing and btc["Date"].is_unique
    assert str(btc["Date"].dtype).startswith("datetime64")
    assert btc["Volume"].isna().sum() > 0  # '-' for early volume
    assert btc["Market Cap"].iloc[-1] == 60_152_300_000.0  # "60,152,300,000"


# --- fixtures with the quirks ------------------------------------------------------------------


def test_bom_crlf_reordered_columns_and_thousands(tmp_path: Path) -> None:
    text = ("\ufeffClose,date,Volume\r\n"
            '"1,200.5","Jan 02, 2017",-\r\n'
            '1100,"January 1, 2017","2,000"\r\n')
    write(tmp_path, "Some Coin.csv", text)
    df = CryptoLoader(tmp_path).get_df("some_coin")
    assert list(df["Close"]) == [1100.0, 1200.5]
    assert list(df["Date"]) == [pd.Timestamp("2017-01-01"), pd.Timestamp("2017-01-02")]
    assert np.isnan(df["Volume"].iloc[1]) and df["Volume"].iloc[0] == 2000.0


def test_entries_named_like_price_files_that_are_none_are_named_with_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # they were passed over without a word, and --coins called them unknown coins
    write(tmp_path, "Good.csv", f'{HEADER}\n"Jan 02, 2017",1,1,1,2,5,6\n"Jan 01, 2017",1,1,1,1,5,6\n')
    (tmp_path / "Dir.csv").mkdir()
    (tmp_path / "Dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    (tmp_path / "good.parquet").symlink_to(tmp_path / "nowhere.parquet")  # Good.csv wins
    (tmp_path / "sub").mkdir()
    (tmp_path / "Linkdir.csv").symlink_to("sub")
    (tmp_path / "Loop.csv").symlink_to("Loop.csv")
    os.mkfifo(tmp_path / "Pipe.csv")  # a read would block for ever
    caplog.set_level(logging.WARNING)
    for reader in (CryptoLoader(tmp_path), CryptoLoader(tmp_path, cache_dir=tmp_path / "c"),
                   CryptoLoader(tmp_path, cache_dir=tmp_path / "c")):  # a warm cache too
        assert reader.get_crypto_names() == ["good"]
        with pytest.raises(CoinNotFound, match=r"^cannot read the price file of coin 'dangling'"
                           r": Dangling.csv: a link that leads to no file"):
            reader.get_prices("dangling")
    messages = {r.getMessage() for r in caplog.records}
    assert {"skipping Dir.csv: a folder, not a file", "skipping Linkdir.csv: a folder, not a file",
            "skipping good.parquet: a link that leads to no file (a dangling link, or a loop)",
            "skipping Loop.csv: a link that leads to no file (a dangling link, or a loop)",
            "skipping Pipe.csv: not a regular file (a pipe or a device)"} <= messages, messages


def test_a_decimal_comma_is_no_number_not_a_hundred_times_the_price(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # "48,09" read as 4809 and "1.234,56" as 1.23456, silently: commas group thousands only
    write(tmp_path, "Euro.csv", f'{HEADER}\n"Jan 03, 2017",1,1,1,"1,234.5",5,6\n'
                                f'"Jan 02, 2017",1,1,1,"48,09",5,6\n'
                                f'"Jan 01, 2017",1,1,1,"1.234,56",5,6\n'
                                f'"Dec 31, 2016",1,1,1,"0,123",5,6\n')
    write(tmp_path, "Comma.csv", f'{HEADER}\n"Jan 02, 2017",1,1,1,"48,09",5,6\n')
    caplog.set_level(logging.WARNING)
    loader = CryptoLoader(tmp_path)
    assert list(loader.get_prices("euro")) == [1234.5]
    assert loader.get_crypto_names() == ["euro"]
    messages = [r.getMessage() for r in caplog.records]
    assert f"Euro.csv: {dropped_rows(3)}" in messages
    assert ("skipping Comma.csv: none of its closes is a number (such as '48,09'; write a "
            "decimal point, 48.09, and commas only between thousands)") in messages


def test_bad_files_are_skipped_with_one_warning_each(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "Good.csv", f'{HEADER}\n"Jan 02, 2017",1,1,1,2,5,6\n"Jan 01, 2017",1,1,1,1,5,6\n')
    write(tmp_path, "Empty.csv", "")
    write(tmp_path, "Header Only.csv", HEADER + "\n")
    write(tmp_path, "Binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    write(tmp_path, "100 List.csv", "#,Name,Market Cap,Price\n1,Bitcoin,$1,$2\n")
    write(tmp_path, "No Close.csv", f'{HEADER}\n"Jan 02, 2017",1,1,1,-,5,6\n')  # '0 usable'
    write(tmp_path, "Inf.csv", f'{HEADER}\n"Jan 02, 2017",1,1,1,inf,5,6\n'
                               f'"Jan 01, 2017",1,1,1,3,5,6\n')  # inf went to the models
    caplog.set_level(logging.WARNING)
    loader = CryptoLoader(tmp_path)
    assert loader.get_crypto_names() == ["good", "inf"]
    assert loader.get_crypto_names() == ["good", "inf"]  # warnings are not repeated
    assert list(loader.get_prices("inf")) == [3.0]
    messages = [r.getMessage() for r in caplog.records]
    for name in ("Empty.csv", "Header Only.csv", "Binary.csv", "100 List.csv", "No Close.csv",
                 "Inf.csv"):
        assert sum(name in m for m in messages) == 1, (name, messages)
    assert f"Inf.csv: {dropped_rows(1)}" in messages
    for reader in (loader, CryptoLoader(tmp_path, cache_dir=tmp_path / "cache")):
        with pytest.raises(CoinNotFound, match=r"^cannot read the price file of coin 'no_close': "
                           r"No Close.csv: none of its closes is a number"):  # 'unknown coin'
            reader.get_prices("No Close")


def test_dates_with_slashes_are_read_in_the_file_s_own_order(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    days = pd.date_range("2017-08-25", "2017-09-22")  # days above 12: each order tells itself
    for name, fmt in (("Us.csv", "%m/%d/%Y"), ("Eu.csv", "%d/%m/%Y")):
        rows = [f"{d.strftime(fmt)},1,1,1,{i + 1},1,1" for i, d in enumerate(days)]
        write(tmp_path, name, HEADER + "\n" + "\n".join(reversed(rows)) + "\n")
    # every day at most 12: the order whose days follow each other, with a row neither reads
    early = pd.date_range("2017-09-01", "2017-09-12")
    for name, fmt in (("Us Early.csv", "%m/%d/%Y"), ("Eu Early.csv", "%d/%m/%Y")):
        rows = [f"{d.strftime(fmt)},1,1,1,{i + 1},1,1" for i, d in enumerate(early)]
        write(tmp_path, name, HEADER + "\n" + "\n".join([*rows, "31/31/2017,1,1,1,9,1,1"]) + "\n")
    write(tmp_path, "Either.csv", f"{HEADER}\n03/04/2017,1,1,1,1,1,1\n04/03/2017,1,1,1,2,1,1\n")
    write(tmp_path, "Unread.csv", f"{HEADER}\n22.09.2017,1,1,1,1,1,1\n21.09.2017,1,1,1,2,1,1\n")
    write(tmp_path, "Slashed.csv", f"{HEADER}\n2017/09/22,1,1,1,2,1,1\n2017/09/21,1,1,1,1,1,1\n")
    caplog.set_level(logging.WARNING)
    loader = CryptoLoader(tmp_path)
    for coin in ("us", "eu"):
        df = loader.get_df(coin)
        assert list(df["Date"]) == list(days) and list(df["Close"]) == list(range(1, 30))
    for coin in ("us_early", "eu_early"):
        df = loader.get_df(coin)
        assert list(df["Date"]) == list(early) and list(df["Close"]) == list(range(1, 13))
    assert "either" not in loader.get_crypto_names() and "unread" not in loader.get_crypto_names()
    assert list(loader.get_df("slashed")["Close"]) == [1.0, 2.0]
    assert any("Unread.csv" in r.getMessage() and "none of its dates could be read (the first: "
               "'22.09.2017')" in r.getMessage() for r in caplog.records)
    assert any("Either.csv" in r.getMessage() and "day/month and as month/day alike" in
               r.getMessage() for r in caplog.records)


def test_two_columns_named_alike_are_refused_not_guessed(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "Two.csv", 'Date,Close,Close \n"Jan 01, 2017",1,5\n"Jan 02, 2017",2,5\n')
    write(tmp_path, "One.csv", 'Date,Close,Open \n"Jan 01, 2017",1,5\n"Jan 02, 2017",2,5\n')
    write(tmp_path, "Same.csv", 'Date,Close,Close\n"Jan 01, 2017",1,5\n"Jan 02, 2017",2,5\n')
    caplog.set_level(logging.WARNING)
    assert CryptoLoader(tmp_path).get_crypto_names() == ["one"]
    assert any("two columns named 'Close' and 'Close '" in r.getMessage()
               for r in caplog.records)
    assert any("Same.csv" in r.getMessage() and "two columns named 'Close' and 'Close.1'" in
               r.getMessage() for r in caplog.records)


def test_unparseable_rows_are_dropped_with_a_count_and_duplicates_kept_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = ['"Jan 03, 2017",1,1,1,3,1,1', '"not a date",1,1,1,9,1,1', '"Jan 02, 2017",1,1,1,abc,1,1',
            '"Jan 02, 2017",1,1,1,2,1,1', '"Jan 01, 2017",1,1,1,-,1,1', '"Jan 01, 2017",1,1,1,7,1,1']
    write(tmp_path, "Dup.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    caplog.set_level(logging.WARNING)
    df = CryptoLoader(tmp_path).get_df("dup")
    # the not-a-date, the "abc", and Jan 01's 7: another close than the first Jan 01's
    assert any("dropped 3 row(s) it could not use" in r.getMessage() for r in caplog.records)
    assert df["Date"].is_unique and len(df) == 3
    assert df["Close"].iloc[1:].tolist() == [2.0, 3.0]
    assert np.isnan(df["Close"].iloc[0])  # '-' is a missing close, kept as NaN


def test_a_date_given_twice_with_another_close_or_a_future_date_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Both were kept without a word: the first of two closes of one date, and a row re-dated
    2099, which became the last close a forecast starts from (an outside probe)."""
    rows = ['"Jan 04, 2017",1,1,1,-4,1,1', '"Jan 03, 2017",1,1,1,3,1,1',
            '"Jan 01, 2099",1,1,1,277,1,1', '"Jan 02, 2017",1,1,1,2,1,1',
            '"Jan 02, 2017",1,1,1,9999,1,1', '"Jan 01, 2017",1,1,1,1,1,1',
            '"Jan 01, 2017",1,1,1,1,1,1']  # the same row again: not counted
    write(tmp_path, "Twice.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    caplog.set_level(logging.WARNING)
    df = CryptoLoader(tmp_path).get_df("twice")
    assert df["Close"].tolist() == [1.0, 2.0, 3.0]  # a close below zero: no price either
    assert [r.getMessage() for r in caplog.records] == [
        "Twice.csv: dropped 3 row(s) it could not use: unreadable, a close below zero, dated "
        "after tomorrow, or a date given again with another close (the first one is kept)"]
    # a whole file of them: that said, not "none of its closes is a number" (a review)
    write(tmp_path, "Later.csv", HEADER + '\n"Jan 02, 2071",1,1,1,101,1,1\n'
          '"Jan 01, 2071",1,1,1,100,1,1\n')
    caplog.clear()
    assert "later" not in CryptoLoader(tmp_path).get_crypto_names()
    assert ("skipping Later.csv: every dated row is after tomorrow (the first: 2071-01-01); "
            "check the year") in caplog.text
    write(tmp_path, "Below.csv", HEADER + '\n"Jan 02, 2017",1,1,1,-2,1,1\n')
    assert "below" not in CryptoLoader(tmp_path).get_crypto_names()
    assert "skipping Below.csv: every close is below zero, which no price is" in caplog.text


def test_max_points_and_date_window(tmp_path: Path) -> None:
    days = pd.date_range("2017-01-01", periods=10)
    rows = [f'"{d:%b %d, %Y}",1,1,1,{i},1,1' for i, d in enumerate(days)][::-1]
    write(tmp_path, "Ten.csv", HEADER + "\n" + "\n".join(rows))
    assert CryptoLoader(tmp_path, max_points=3).get_prices("ten").tolist() == [7, 8, 9]
    window = CryptoLoader(tmp_path, from_date="2017-01-03", to_date="2017-01-05")
    assert window.get_prices("ten").tolist() == [2, 3, 4]


def test_unknown_coin_names_it_and_suggests(tmp_path: Path) -> None:
    write(tmp_path, "Bitcoin.csv", f'{HEADER}\n"Jan 01, 2017",1,1,1,1,1,1\n')
    with pytest.raises(CoinNotFound) as caught:
        CryptoLoader(tmp_path).get_prices("bitcoinn")
    assert isinstance(caught.value, CryptoMLError)
    assert "bitcoinn" in str(caught.value) and "bitcoin" in str(caught.value).split("mean")[1]


def test_missing_or_empty_data_dir_says_how_to_get_data(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match="Top 100 Cryptocurrency Historical Data"):
        CryptoLoader(tmp_path / "nope").get_crypto_names()
    with pytest.raises(DataNotFound, match="no price files"):
        CryptoLoader(tmp_path).get_crypto_names()
    with pytest.raises(DataNotFound, match="/dev/null is no folder or file"):  # was a traceback
        CryptoLoader(Path("/dev/null")).get_crypto_names()


def test_a_coin_asked_for_by_anything_but_text_is_one_clear_error(tmp_path: Path) -> None:
    write(tmp_path, "Good.csv", f'{HEADER}\n"Jan 02, 2017",1,1,1,2,5,6\n')
    for odd in (None, 5):
        with pytest.raises(CryptoMLError, match="a coin is named by text"):
            CryptoLoader(tmp_path).get_prices(odd)  # type: ignore[arg-type]


def test_coin_id() -> None:
    assert coin_id("Bitcoin Cash") == "bitcoin_cash"
    assert coin_id("I-O Coin") == "i-o_coin"


# --- the cache of parsed files -----------------------------------------------------------------


def quirky_folder(folder: Path) -> Path:
    folder.mkdir()
    write(folder, "Dup.csv", HEADER + "\n" + "\n".join([
        '"Jan 03, 2017",1,1,1,3,1,1', '"not a date",1,1,1,9,1,1', '"June 2, 2017",1,1,1,"1,002",-,1',
        '"Jan 01, 2017",1,1,1,-,1,1', "42093,1,1,1,4,1,1"]) + "\n")
    write(folder, "Some Coin.csv", "\ufeffClose,date\r\n\"1,200.5\",\"Jan 02, 2017\"\r\n")
    write(folder, "100 List.csv", "#,Name,Market Cap,Price\n1,Bitcoin,$1,$2\n")
    return folder


def test_the_cache_serves_what_parsing_gives_and_warns_the_same(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, cache = quirky_folder(tmp_path / "data"), tmp_path / "cache"
    plain = CryptoLoader(data)
    first = CryptoLoader(data, cache_dir=cache)
    assert first.get_crypto_names() == plain.get_crypto_names() == ["dup", "some_coin"]
    assert list(cache.iterdir())  # written
    caplog.set_level(logging.WARNING)
    caplog.clear()
    again = CryptoLoader(data, cache_dir=cache, max_points=3)
    assert again.get_crypto_names() == ["dup", "some_coin"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("100 List.csv" in m for m in messages) == 1
    for coin in ("dup", "some_coin"):
        pd.testing.assert_frame_equal(again.get_df(coin), CryptoLoader(data, max_points=3)
                                      .get_df(coin))
        dates, closes = again.get_closes(coin)
        frame = CryptoLoader(data, max_points=3).get_df(coin).dropna(subset=["Close"])
        assert closes.tolist() == frame["Close"].tolist()
        assert list(dates) == list(frame["Date"].to_numpy())
    assert any(f"Dup.csv: {dropped_rows(1)}" in r.getMessage() for r in caplog.records)
    with pytest.raises(CoinNotFound):
        again.get_df("dupp")


def test_reading_named_coins_warns_only_of_those_cold_or_cached(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, cache = quirky_folder(tmp_path / "data"), tmp_path / "cache"
    caplog.set_level(logging.WARNING)
    for _ in ("cold cache", "warm cache"):
        caplog.clear()
        loader = CryptoLoader(data, cache_dir=cache)
        assert loader.get_prices("some_coin").tolist() == [1200.5]
        assert caplog.records == []  # neither the ranking file nor Dup.csv was asked for
        loader.get_closes("dup")
        loader.get_prices("dup")
        assert [r.getMessage() for r in caplog.records] == [f"Dup.csv: {dropped_rows(1)}"]


def test_a_changed_or_added_file_is_parsed_again(tmp_path: Path) -> None:
    data, cache = quirky_folder(tmp_path / "data"), tmp_path / "cache"
    assert CryptoLoader(data, cache_dir=cache).get_prices("some_coin").tolist() == [1200.5]
    write(data, "Some Coin.csv", "Close,date\n7,\"Jan 02, 2017\"\n8,\"Jan 03, 2017\"\n")
    write(data, "New.csv", f'{HEADER}\n"Jan 01, 2017",1,1,1,5,1,1\n')
    fresh = CryptoLoader(data, cache_dir=cache)
    assert fresh.get_prices("some_coin").tolist() == [7.0, 8.0]
    assert fresh.get_crypto_names() == ["dup", "new", "some_coin"]


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"max_points": 0}, "max_points must be a whole number of closes, at least 1"),
    ({"max_points": "5"}, "max_points must be a whole number"),  # a TypeError from '<'
    ({"max_points": 2.5}, "max_points must be a whole number"),  # a TypeError in a slice
    ({"from_date": "notadate"}, "from_date must be a date, like '2017-06-01', got 'notadate'"),
    ({"from_date": "2017-06-01", "to_date": "2017-01-01"}, "from_date 2017-06-01 is after"),
    ({"data_dir": 5}, "data_dir must be a folder's path, got 5"),  # pathlib's TypeError
])
def test_a_bad_loader_argument_is_one_config_error_naming_it(
        tmp_path: Path, kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        CryptoLoader(**{"data_dir": tmp_path, **kwargs})  # type: ignore[arg-type]
    assert CryptoLoader(tmp_path, max_points=np.int64(3)).max_points == 3
