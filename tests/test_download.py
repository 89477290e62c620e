"""The downloader against a local HTTP server (127.0.0.1) answering in CryptoCompare's format."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from conftest import FIXTURES, ROOT

from crypto_ml.core.errors import ConfigError, DataNotFound
from crypto_ml.data.download import Client, download, fetch_days
from crypto_ml.data.loader import CryptoLoader

API = FIXTURES / "cryptocompare"
DAY = 86400
TODAY = datetime.now(UTC).date()
LISTED = {"BTC": 2500, "ETH": 300, "XRP": 40}  # days of history before today


def close_of(symbol: str, day: date) -> float:
    """The fake market: a deterministic close per coin and day."""
    return round(100.0 + len(symbol) + (day.toordinal() % 97) * 0.5, 4)


class FakeApi:
    """Serves /data/top/mktcapfull (the fixture file) and /data/v2/histoday (generated)."""

    def __init__(self) -> None:
        self.today = TODAY
        self.log: list[tuple[str, dict[str, str], float]] = []
        self.scripted: list[tuple[int, dict[str, Any]]] = []  # answered first, in order
        self.broken: set[str] = set()  # symbols that always get HTTP 500

    def histoday(self, q: dict[str, str]) -> dict[str, Any]:
        now = datetime(*self.today.timetuple()[:3], tzinfo=UTC).timestamp() + 3600
        to_ts = int(q.get("toTs", now)) // DAY * DAY
        limit = int(q["limit"])
        first = date(*self.today.timetuple()[:3]) - timedelta(days=LISTED[q["fsym"]])
        candles = []
        for ts in range(to_ts - limit * DAY, to_ts + DAY, DAY):
            day = datetime.fromtimestamp(ts, UTC).date()
            c = close_of(q["fsym"], day) if day >= first else 0.0
            candles.append({"time": ts, "high": c * 1.1, "low": c * 0.9, "open": c,
                            "volumefrom": c and 10.0, "volumeto": c and 1000.0, "close": c,
                            "conversionType": "direct", "conversionSymbol": ""})
        return {"Response": "Success", "Message": "", "HasWarning": False, "Type": 100,
                "RateLimit": {}, "Data": {"Aggregated": False, "TimeFrom": candles[0]["time"],
                                          "TimeTo": candles[-1]["time"], "Data": candles}}

    def answer(self, path: str, q: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.log.append((path, q, time.monotonic()))
        if self.scripted:
            return self.scripted.pop(0)
        if path == "/data/top/mktcapfull":
            body = json.loads((API / "top_mktcapfull.json").read_text())
            body["Data"] = body["Data"][: int(q["limit"])] if q.get("page") == "0" else []
            return 200, body
        if path == "/data/v2/histoday":
            return (500, {}) if q["fsym"] in self.broken else (200, self.histoday(q))
        return 404, {}

    def histoday_calls(self, symbol: str) -> int:
        return sum(1 for p, q, _ in self.log if p.endswith("histoday") and q["fsym"] == symbol)


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            status, body = fake.answer(url.path, {k: v[-1] for k, v in parse_qs(url.query).items()})
            data = json.dumps(body).encode()
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fast_client(url: str, **kw: Any) -> Client:
    return Client(base_url=url, interval=0.0, backoff=0.01, **kw)


def test_downloads_the_top_coins_into_files_the_loader_reads(api: tuple[FakeApi, str],
                                                             tmp_path: Path) -> None:
    fake, url = api
    report = download(fast_client(url), tmp_path, top=3, out=io.StringIO())
    assert report.failed == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Bitcoin.csv", "Ethereum.csv", "XRP.csv"]
    loader = CryptoLoader(tmp_path)
    assert loader.get_crypto_names() == ["bitcoin", "ethereum", "xrp"]
    btc = loader.get_df("bitcoin")
    assert len(btc) == LISTED["BTC"]  # every traded day up to yesterday; today's is still open
    assert btc["Date"].iloc[-1].date() == TODAY - timedelta(days=1)
    assert btc["Date"].diff().dropna().dt.days.eq(1).all()
    assert btc["Close"].iloc[0] == close_of("BTC", TODAY - timedelta(days=2500))
    assert list(btc.columns) == ["Date", "Open", "High", "Low", "Close", "Volume"]
    assert fake.histoday_calls("BTC") == 2  # 2500 days need two pages of 2000
    assert fake.histoday_calls("XRP") == 1


def test_a_second_run_only_fetches_the_new_days(api: tuple[FakeApi, str],
                                                tmp_path: Path) -> None:
    fake, url = api
    fake.today = TODAY - timedelta(days=10)
    download(fast_client(url), tmp_path, top=3, today=fake.today, out=io.StringIO())
    before = CryptoLoader(tmp_path).get_df("ethereum")
    fake.today, fake.log = TODAY, []
    report = download(fast_client(url), tmp_path, top=3, today=TODAY, out=io.StringIO())
    assert report.written == {"Bitcoin": 10, "Ethereum": 10, "XRP": 10}
    assert all(fake.histoday_calls(s) == 1 for s in LISTED)  # one page each, not the history
    after = CryptoLoader(tmp_path).get_df("ethereum")
    assert len(after) == len(before) + 10 and after["Date"].is_unique
    assert after["Close"].iloc[-1] == close_of("ETH", TODAY - timedelta(days=1))
    fake.log = []
    again = download(fast_client(url), tmp_path, top=3, today=TODAY, out=io.StringIO())
    assert sorted(again.up_to_date) == ["Bitcoin", "Ethereum", "XRP"]
    assert all(fake.histoday_calls(s) == 0 for s in LISTED)


def test_rate_limits_are_retried_and_requests_are_spaced(api: tuple[FakeApi, str],
                                                         tmp_path: Path) -> None:
    fake, url = api
    limited = {"Response": "Error", "Message": "You are over your rate limit please upgrade "
               "your account!", "HasWarning": False, "Type": 99, "RateLimit": {}, "Data": {}}
    fake.scripted = [(200, limited), (429, {})]
    now = [0.0]
    starts: list[float] = []

    def clock() -> float:  # virtual time: advances only when the client waits
        return now[0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    client = Client(base_url=url, interval=0.6, backoff=1.0, sleep=sleep, clock=clock)
    original = client._try
    client._try = lambda u: (starts.append(now[0]), original(u))[1]  # type: ignore[method-assign]
    report = download(client, tmp_path, top=2, out=io.StringIO())
    assert report.failed == {} and set(report.written) == {"Bitcoin", "Ethereum"}
    assert len(fake.log) == 2 + 1 + 2 + 1  # 2 refused + top list + BTC's 2 pages + ETH's page
    # backoff 1 s, then 2 s, after each refusal; then one request per 0.6 s interval
    assert np.diff(starts).tolist() == pytest.approx([1.0, 2.0, 0.6, 0.6, 0.6])


def test_a_failing_coin_is_reported_and_the_others_written(api: tuple[FakeApi, str],
                                                           tmp_path: Path) -> None:
    fake, url = api
    fake.broken = {"ETH"}
    report = download(fast_client(url, retries=1), tmp_path, top=3, out=io.StringIO())
    assert set(report.failed) == {"Ethereum"} and "HTTP 500" in report.failed["Ethereum"]
    assert fake.histoday_calls("ETH") == 2  # tried, retried once, given up
    assert CryptoLoader(tmp_path).get_crypto_names() == ["bitcoin", "xrp"]


def test_api_errors_name_the_problem(api: tuple[FakeApi, str], tmp_path: Path) -> None:
    fake, url = api
    fake.scripted = [(200, {"Response": "Error", "Message": "tsym is a required param.",
                            "HasWarning": False, "Type": 2, "RateLimit": {}, "Data": {},
                            "ParamWithError": "tsym"})]
    with pytest.raises(ConfigError, match="tsym is a required param"):
        download(fast_client(url), tmp_path, top=3, out=io.StringIO())
    assert len(fake.log) == 1  # a refusal that is not a rate limit is not retried


def test_parses_a_real_format_page_and_stops_at_the_listing(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    fake.scripted = [(200, json.loads((API / "histoday_page.json").read_text()))]
    days = fetch_days(fast_client(url), "BTC", None, today=date(2020, 1, 1))
    assert [d["close"] for d in days] == [0.08584, 0.0808, 0.07474]
    assert len(fake.log) == 1  # the zero candle says there is nothing older


def run_data_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crypto_ml.data", "download", *args,
                           "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.integration  # runs a command in a subprocess
def test_cli_downloads_and_exits_1_when_a_coin_fails(api: tuple[FakeApi, str],
                                                     tmp_path: Path) -> None:
    fake, url = api
    fake.broken = {"XRP"}
    done = run_data_cli("--top", "3", "--api-url", url, "--interval", "0", "--retries", "0",
                        data_dir=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "3/3" in done.stderr and "failed: XRP" in done.stderr
    assert "2 coin(s) updated" in done.stderr
    assert (tmp_path / "Bitcoin.csv").is_file()


@pytest.mark.integration  # runs a command in a subprocess
def test_cli_says_when_the_api_cannot_be_reached(tmp_path: Path) -> None:
    done = run_data_cli("--api-url", "http://127.0.0.1:9", "--retries", "0", data_dir=tmp_path)
    assert done.returncode == 2
    assert "cannot reach http://127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr


def test_the_no_data_message_names_the_downloader(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match=r"python -m crypto_ml\.data download"):
        CryptoLoader(tmp_path / "absent").get_crypto_names()
