"""Fetch daily OHLCV history of the top N coins from CryptoCompare's public, keyless API.

Two endpoints, both JSON over HTTPS (``https://min-api.cryptocompare.com``):

``GET /data/top/mktcapfull?tsym=USD&limit=100&page=0``
    the coins by market cap, at most 100 a page::

        {"Message": "Success", "Type": 100, "MetaData": {"Count": 3271},
         "Data": [{"CoinInfo": {"Id": "1182", "Name": "BTC", "FullName": "Bitcoin", ...},
                   "RAW": {"USD": {"MKTCAP": ..., ...}}, "DISPLAY": {...}}, ...]}

``GET /data/v2/histoday?fsym=BTC&tsym=USD&limit=2000[&toTs=UNIX]``
    up to ``limit + 1`` daily candles (00:00 UTC days) ending at ``toTs`` (default:
    now, whose last candle is today's, still open)::

        {"Response": "Success", "Message": "", "HasWarning": false, "Type": 100,
         "RateLimit": {}, "Data": {"Aggregated": false, "TimeFrom": 1262304000,
         "TimeTo": 1434758400, "Data": [{"time": 1262304000, "high": 0.0, "low": 0.0,
         "open": 0.0, "volumefrom": 0.0, "volumeto": 0.0, "close": 0.0,
         "conversionType": "direct", "conversionSymbol": ""}, ...]}}

    Days before a coin traded come back as all-zero candles; older pages are
    fetched with ``toTs = TimeFrom - 1`` until such zeros (or an empty page) appear.

Failures come back as HTTP 200 with ``{"Response": "Error", "Message": "...",
"Type": 1|2|99, ...}``; ``Type`` 99 (and HTTP 429) mean the rate limit was hit.

Each coin is written as ``<FullName>.csv`` (``Date,Open,High,Low,Close,Volume``, ISO
dates, oldest first, Volume in the quote currency), which :class:`CryptoLoader`
reads. A run is resumable: a coin's file that exists is only extended with the days
after its last one, a coin already up to yesterday costs no request, and each file
is replaced atomically, so an interrupted run loses at most the coin in progress.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from crypto_ml.core.errors import ConfigError, CryptoMLError
from crypto_ml.core.progress import ProgressBar
from crypto_ml.data.parsing import BadFile, parse_price_csv

API_URL = "https://min-api.cryptocompare.com"
TOP_PATH = "/data/top/mktcapfull"
HISTODAY_PATH = "/data/v2/histoday"
PAGE_DAYS = 2000
TOP_PAGE = 100
COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RATE_LIMITED_TYPE = 99


class DownloadError(CryptoMLError):
    """The API answered with an error, or not at all, for one request."""


def route(url: str) -> str:
    """How a request to ``url`` goes: ``to host H directly (no HTTPS_PROXY set ...)`` or
    through which proxy (its address without any password)."""
    parts = urllib.parse.urlsplit(url)
    host, scheme = parts.hostname or url, parts.scheme or "https"
    proxy = urllib.request.getproxies().get(scheme)
    variable = f"{scheme.upper()}_PROXY"
    if not proxy or urllib.request.proxy_bypass(host):
        return (f"to host {host} directly (no {variable} used; proxy settings: HTTPS_PROXY, "
                "HTTP_PROXY, NO_PROXY)")
    where = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return (f"to host {host} through the proxy {where.hostname}:{where.port or 'default port'} "
            f"({variable}; NO_PROXY lists hosts that bypass it)")


@dataclass
class Client:
    """GETs JSON from the API: at most one request per ``interval`` s, retrying when told to.

    A request that hits the rate limit (HTTP 429 or ``Type`` 99), a server error
    or a dropped connection is retried up to ``retries`` times, waiting
    ``backoff * 2**attempt`` s (or the server's ``Retry-After``) in between.
    """

    base_url: str = API_URL
    interval: float = 0.6
    retries: int = 4
    backoff: float = 2.0
    timeout: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _last: float = field(default=-1e9, init=False)

    def _wait_turn(self) -> None:
        delay = self._last + self.interval - self.clock()
        if delay > 0:
            self.sleep(delay)
        self._last = self.clock()

    def url(self, path: str, params: dict[str, Any]) -> str:
        return f"{self.base_url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """The decoded JSON body, or DownloadError saying what went wrong and what to do."""
        url = self.url(path, params)
        for attempt in range(self.retries + 1):
            self._wait_turn()
            body, problem, retry_after = self._try(url)
            if problem is None:
                return body
            if retry_after is None or attempt == self.retries:
                raise DownloadError(problem)
            self.sleep(max(retry_after, self.backoff * 2**attempt))
        raise AssertionError("unreachable")

    def _try(self, url: str) -> tuple[dict[str, Any], str | None, float | None]:
        """``(body, None, None)``, or ``({}, problem, seconds to wait before a retry or None)``."""
        request = urllib.request.Request(url, headers={"User-Agent": "crypto-ml downloader",
                                                       "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            problem = f"{url} answered HTTP {exc.code} {exc.reason}"
            if exc.code not in RETRY_STATUS:
                return {}, problem, None
            wait = exc.headers.get("Retry-After", "0")
            return {}, problem, float(wait) if wait.isdigit() else 0.0
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            # no name or a refused connection: no network (or a wrong proxy); no retry helps
            final = isinstance(reason, socket.gaierror | ConnectionRefusedError)
            return {}, (f"cannot reach {self.base_url} ({reason}) {route(url)}; check the "
                        "network and the proxy settings, or point --api-url at a reachable "
                        "mirror"), None if final else 0.0
        try:
            body = json.loads(raw)
        except ValueError:
            return {}, f"{url} answered something that is not JSON: {raw[:80]!r}", None
        if not isinstance(body, dict):
            return {}, f"{url} answered JSON that is not an object", None
        if body.get("Response") == "Error":
            problem = f"the API refused {url}: {body.get('Message') or 'no reason given'}"
            return {}, problem, (0.0 if body.get("Type") == RATE_LIMITED_TYPE else None)
        return body, None, None


@dataclass(frozen=True)
class Coin:
    """A coin of the top list: its ticker and its full name (which names its file)."""

    symbol: str
    name: str

    @property
    def filename(self) -> str:
        safe = re.sub(r"[^\w .()-]+", "_", self.name).strip(" ._") or self.symbol
        return f"{safe}.csv"


def top_coins(client: Client, n: int, currency: str = "USD") -> list[Coin]:
    """The ``n`` coins of highest market cap, first first."""
    coins: list[Coin] = []
    page = 0
    while len(coins) < n:
        body = client.get(TOP_PATH, {"tsym": currency, "limit": min(TOP_PAGE, n), "page": page})
        entries = body.get("Data") or []
        for entry in entries:
            info = entry.get("CoinInfo") or {}
            if info.get("Name") and len(coins) < n:
                coins.append(Coin(str(info["Name"]), str(info.get("FullName") or info["Name"])))
        if len(entries) < min(TOP_PAGE, n):
            break
        page += 1
    return coins


def _day(candle: dict[str, Any]) -> date:
    return datetime.fromtimestamp(int(candle["time"]), UTC).date()


def _traded(candle: dict[str, Any]) -> bool:
    return any(float(candle.get(k) or 0) for k in ("open", "high", "low", "close"))


def fetch_days(client: Client, symbol: str, after: date | None, today: date,
               currency: str = "USD") -> list[dict[str, Any]]:
    """Closed daily candles of ``symbol`` after ``after`` (all, if None) and before ``today``."""
    candles: dict[date, dict[str, Any]] = {}
    to_ts: int | None = None
    while True:
        params: dict[str, Any] = {"fsym": symbol, "tsym": currency, "limit": PAGE_DAYS}
        if to_ts is not None:
            params["toTs"] = to_ts
        data = client.get(HISTODAY_PATH, params).get("Data") or {}
        page = data.get("Data") or []
        for candle in page:
            day = _day(candle)
            if _traded(candle) and day < today and (after is None or day > after):
                candles[day] = candle
        reached_old = after is not None and page and _day(page[0]) <= after
        if not page or reached_old or not all(_traded(c) for c in page):
            break
        to_ts = int(data.get("TimeFrom", page[0]["time"])) - 1
    return [candles[d] for d in sorted(candles)]


def _row(candle: dict[str, Any]) -> list[str]:
    values = [candle[k] for k in ("open", "high", "low", "close", "volumeto")]
    return [_day(candle).isoformat(), *(repr(float(v)) for v in values)]


def last_day(path: Path) -> date | None:
    """The newest date in an existing coin file, or None when there is none to extend."""
    if not path.is_file():
        return None
    try:
        frame, _ = parse_price_csv(path)
    except (BadFile, OSError):
        return None
    return None if frame.empty else frame["Date"].iloc[-1].date()


def write_coin(path: Path, candles: list[dict[str, Any]]) -> None:
    """Append ``candles`` to the coin's file (created with a header), replacing it atomically."""
    old = path.read_text() if path.is_file() and last_day(path) is not None else ""
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("w", newline="") as handle:
        if old:
            handle.write(old if old.endswith("\n") else old + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        if not old:
            writer.writerow(COLUMNS)
        writer.writerows(_row(c) for c in candles)
    os.replace(tmp, path)


@dataclass
class DownloadReport:
    """What a download did, per coin."""

    written: dict[str, int] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def download(client: Client, data_dir: Path, top: int, currency: str = "USD",
             today: date | None = None, out: TextIO | None = None) -> DownloadReport:
    """Bring the top ``top`` coins' files in ``data_dir`` up to yesterday."""
    out = out or sys.stderr
    today = today or datetime.now(UTC).date()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        coins = top_coins(client, top, currency)
    except DownloadError as exc:
        raise ConfigError(f"cannot get the top-{top} list: {exc}") from None
    report = DownloadReport()
    bar = ProgressBar(out, unit="coins")
    bar.total = len(coins)
    for coin in coins:
        path = data_dir / coin.filename
        after = last_day(path)
        if after is not None and after >= today - timedelta(days=1):
            report.up_to_date.append(coin.name)
        else:
            try:
                candles = fetch_days(client, coin.symbol, after, today, currency)
                if not candles and after is None:
                    raise DownloadError(f"the API has no traded days of {coin.symbol}")
                if candles:
                    write_coin(path, candles)
                report.written[coin.name] = len(candles)
            except DownloadError as exc:
                report.failed[coin.name] = str(exc)
                bar.clear()
                print(f"failed: {coin.name} ({coin.symbol}): {exc}", file=out, flush=True)
        bar.step(ok=coin.name not in report.failed)
    bar.close()
    return report
