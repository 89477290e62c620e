"""The loader reads per-coin CSV/Parquet files and consolidated CSV/Parquet files alike."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypto_ml.core.errors import CoinNotFound
from crypto_ml.data.loader import CryptoLoader

KAGGLE_STYLE = """slug,symbol,name,date,ranknow,open,high,low,close,volume,market
bitcoin,BTC,Bitcoin,2017-09-22,1,3628.02,3758.27,3553.53,3630.7,1194830000,60152300000
bitcoin,BTC,Bitcoin,2017-09-20,1,3916.36,4031.39,3857.73,3905.95,1213830000,64858500000
ethereum,ETH,Ethereum,2017-09-20,2,284.06,288.18,279.38,283.21,330380000,26851500000
bitcoin,BTC,Bitcoin,2017-09-21,1,3901.47,3916.42,3613.63,3631.04,1411480000,64677600000
bitcoin-cash,BCH,Bitcoin Cash,2017-09-21,3,500.1,510.3,450.0,480.5,1000,2000
ethereum,ETH,Ethereum,not a date,2,1,1,1,1,1,1
ethereum,ETH,Ethereum,2017-09-21,2,283.2,285.0,255.8,258.4,500000000,24500000000
"""


def test_a_consolidated_csv_is_split_by_its_coin_column(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "crypto-markets.csv").write_text(KAGGLE_STYLE)
    loader = CryptoLoader(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert loader.get_crypto_names() == ["bitcoin", "bitcoin_cash", "ethereum"]
        eth = loader.get_df("ethereum")
    assert "crypto-markets.csv[ethereum]: dropped 1 row(s) it could not use" in caplog.text
    assert eth["Date"].dt.strftime("%Y-%m-%d").tolist() == ["2017-09-20", "2017-09-21"]
    assert loader.get_prices("bitcoin").tolist() == [3905.95, 3631.04, 3630.7]  # oldest first
    assert loader.get_df("Bitcoin Cash")["Volume"].tolist() == [1000.0]
    with pytest.raises(CoinNotFound, match="ethereum"):
        loader.get_df("etherium")


def test_per_coin_parquet_files_with_typed_columns(tmp_path: Path) -> None:
    dates = pd.date_range("2021-01-01", periods=5, freq="D")
    closes = [10.0, 11.5, np.nan, 12.25, 13.0]
    pd.DataFrame({"date": dates[::-1], "CLOSE": closes[::-1], "Volume": range(5)}).to_parquet(
        tmp_path / "Bitcoin Cash.parquet")
    pd.DataFrame({"Date": dates.date, "Close": closes}).to_parquet(tmp_path / "Dogecoin.parquet")
    loader = CryptoLoader(tmp_path)
    assert loader.get_crypto_names() == ["bitcoin_cash", "dogecoin"]
    for coin in ("bitcoin_cash", "dogecoin"):
        np.testing.assert_array_equal(loader.get_prices(coin), closes)
        assert loader.get_df(coin)["Date"].tolist() == list(dates)


def test_a_consolidated_parquet_file_with_tz_aware_times(tmp_path: Path) -> None:
    stamps = pd.date_range("2021-03-01", periods=3, freq="D", tz="UTC")
    frame = pd.DataFrame({"Coin": ["A", "B", "A"], "Timestamp": stamps, "close": [1.0, 2.0, 3.0]})
    frame = frame.rename(columns={"Timestamp": "Date"})
    frame.to_parquet(tmp_path / "all.parquet")
    loader = CryptoLoader(tmp_path / "all.parquet")  # the data dir may name one file
    assert loader.get_crypto_names() == ["a", "b"]
    assert loader.get_prices("a").tolist() == [1.0, 3.0]
    assert loader.get_df("b")["Date"].tolist() == [pd.Timestamp("2021-03-02")]


def test_layouts_mix_and_the_first_file_claiming_a_coin_wins(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "Bitcoin.csv").write_text('Date,Close\n"Sep 22, 2017",1.5\n')
    (tmp_path / "markets.csv").write_text(KAGGLE_STYLE)
    (tmp_path / "100 List.csv").write_text("#,Name,Market Cap\n1,Bitcoin,$1\n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    loader = CryptoLoader(tmp_path)
    with caplog.at_level(logging.WARNING):
        names = loader.get_crypto_names()
    assert names == ["bitcoin", "bitcoin_cash", "ethereum"]
    assert loader.get_prices("bitcoin").tolist() == [1.5]  # Bitcoin.csv sorts before markets.csv
    assert "markets.csv[bitcoin]: coin 'bitcoin' is also in Bitcoin.csv" in caplog.text
    assert "skipping 100 List.csv: no Date or Close column" in caplog.text
    assert "skipping broken.parquet: it is not a readable Parquet file" in caplog.text
