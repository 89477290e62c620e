"""Command line for price data: ``python -m crypto_ml.data download``.

Exit codes: 0 every coin is up to date; 1 some coins failed (the others are
written, each failure listed); 2 the API or the data folder cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from crypto_ml.cli_args import positive_int as _positive
from crypto_ml.download import API_URL, Client, download
from crypto_ml.errors import ConfigError
from crypto_ml.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crypto_ml.data",
                                     description="Get daily price history for crypto-ml.")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="fetch the top N coins' daily OHLCV from CryptoCompare "
                         "into the data folder (resumable: run again to bring it up to date)")
    get.add_argument("--top", type=_positive, default=100, help="how many coins by market cap "
                     "(100)")
    get.add_argument("--data-dir", type=Path,
                     help="folder to write <Coin>.csv files to (default: CRYPTO_ML_DATA_DIR)")
    get.add_argument("--currency", default="USD", help="quote currency (USD)")
    get.add_argument("--api-url", default=API_URL, help=f"API base URL ({API_URL})")
    get.add_argument("--interval", type=float, default=0.6,
                     help="seconds between requests, to stay under the public rate limit (0.6)")
    get.add_argument("--retries", type=int, default=4,
                     help="retries of a rate-limited or failed request (4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or Settings.from_env().data_dir
    client = Client(base_url=args.api_url, interval=max(0.0, args.interval),
                    retries=max(0, args.retries))
    try:
        report = download(client, data_dir, args.top, args.currency.upper())
    except ConfigError as exc:
        print(f"crypto-ml data: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"crypto-ml data: error: cannot write to {data_dir} ({exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crypto-ml data: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    days = sum(report.written.values())
    print(f"{len(report.written)} coin(s) updated with {days} day(s), "
          f"{len(report.up_to_date)} already up to date, {len(report.failed)} failed; "
          f"files in {data_dir}", file=sys.stderr)
    for name, reason in report.failed.items():
        print(f"failed: {name}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
