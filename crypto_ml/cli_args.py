"""Command-line options shared by the ``send-tasks``, ``backtest`` and ``download`` commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: broker, wait limit, data folder, embedded worker count."""
    parser.add_argument("--broker",
                        help="Redis URL (default: CRYPTO_ML_BROKER_URL, else embedded)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for all results (3600)")
    parser.add_argument("--data-dir", type=Path, help="price data folder (CRYPTO_ML_DATA_DIR)")
    parser.add_argument("--workers", type=positive_int,
                        help="worker processes of the embedded cluster (default: one per core)")
