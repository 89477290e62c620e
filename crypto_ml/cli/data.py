"""``crypto-ml data download`` (also ``python -m crypto_ml.data download``): get price history.

Exit codes: 0 every coin is up to date; 1 some coins failed (the others are
written, each failure listed); 2 the API or the data folder cannot be used;
130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
from typing import Any

from crypto_ml.cli.helptext import help_texts
from crypto_ml.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    add_log_options,
    http_url,
    path_option,
    pause_seconds,
    positive_int,
    whole_number,
)
from crypto_ml.cli.terminal import console, progress_stream
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.data.download import API_URL, Client, download


def add_parser(sub: Any) -> None:
    """``data download`` and its options."""
    data = sub.add_parser("data", help="get daily price history (download)", **help_texts("data"))
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{download}")
    get = data_sub.add_parser("download", help="fetch the top N coins' daily OHLCV from CryptoCompare "
                              "into the data folder (resumable: run again to bring it up to date)",
                              **help_texts("data"))
    get.add_argument("--top", type=positive_int, default=100, help="how many coins by market cap "
                     "(100)")
    get.add_argument("--data-dir", type=path_option,
                     help="folder to write <Coin>.csv files to (default: CRYPTO_ML_DATA_DIR)")
    get.add_argument("--currency", default="USD", help="quote currency (USD)")
    get.add_argument("--api-url", type=http_url, default=API_URL, help=f"API base URL ({API_URL})")
    get.add_argument("--interval", type=pause_seconds, default=0.6,
                     help="seconds between requests, to stay under the public rate limit (0.6)")
    get.add_argument("--retries", type=whole_number, default=4,
                     help="retries of a rate-limited or failed request (4)")
    add_log_options(get, "also crypto_ml's info logs")
    get.set_defaults(run=download_main, interrupted="run the same command again to resume")


def download_main(args: argparse.Namespace) -> int:
    """Bring the data folder's coins up to date; list the failures."""
    settings = Settings.from_env()
    data_dir = args.data_dir or settings.data_dir
    client = Client(base_url=args.api_url, interval=max(0.0, args.interval),
                    retries=max(0, args.retries))
    try:
        report = download(client, data_dir, args.top, args.currency.upper(),
                          out=progress_stream(args.quiet, args.log_format or settings.log_format))
    except OSError as exc:
        raise ConfigError(f"cannot write to {data_dir} ({exc})") from None
    days = sum(report.written.values())
    console.info(f"{len(report.written)} coin(s) updated with {days} day(s), "
                 f"{len(report.up_to_date)} already up to date, {len(report.failed)} failed; "
                 f"files in {data_dir}")
    for name, reason in report.failed.items():
        console.warning(f"failed: {name}: {reason}")
    return EXIT_FAILED if report.failed else EXIT_OK
