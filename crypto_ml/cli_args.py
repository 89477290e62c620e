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


def max_points(text: str) -> int:
    """argparse type of ``--max-points``: a positive N, or ``all`` (or 0) for the whole history."""
    if text.strip().lower() in ("all", "0"):
        return 0
    return positive_int(text)


def levels(text: str) -> tuple[float, ...]:
    """argparse type of ``--levels``: ``80,95`` -> (80.0, 95.0); ``none`` for no intervals."""
    from crypto_ml.errors import InvalidTaskInput
    from crypto_ml.models.intervals import check_levels

    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return check_levels(text)
    except InvalidTaskInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: broker, wait limit, data folder, embedded worker count."""
    parser.add_argument("--broker",
                        help="Redis URL (default: CRYPTO_ML_BROKER_URL, else embedded)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for all results (3600)")
    parser.add_argument("--data-dir", type=Path, help="price data folder (CRYPTO_ML_DATA_DIR)")
    parser.add_argument("--workers", type=positive_int,
                        help="worker processes of the embedded cluster (default: one per core)")
