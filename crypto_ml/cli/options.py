"""What the subcommands share: exit codes, option types, the cluster options, the settings.

The settings of a command are the environment's (:meth:`Settings.from_env`) with
the command line's overrides; this is where the command line reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
from datetime import date
from pathlib import Path
from typing import Protocol

from crypto_ml.core.settings import LOG_FORMATS, Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.models import parse_models

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


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


def add_log_options(parser: argparse.ArgumentParser, level: str) -> None:
    """``--log-format`` and ``--log-level`` (default ``level``)."""
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="log lines as text or json (CRYPTO_ML_LOG_FORMAT, default text)")
    parser.add_argument("--log-level", default=level, choices=("debug", "info", "warning"),
                        help=f"how much to log ({level})")


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's overrides."""
    settings = Settings.from_env().with_broker(getattr(args, "broker", None))
    changes = {}
    if getattr(args, "data_dir", None) is not None:
        changes["data_dir"] = args.data_dir
    if getattr(args, "workers", None) is not None:
        changes["workers"] = args.workers
    if getattr(args, "log_format", None):
        changes["log_format"] = args.log_format
    return dataclasses.replace(settings, **changes)


def checked_inputs(args: argparse.Namespace, check_models: bool = True,
                   to_date: date | None = None) -> tuple[Settings, CryptoLoader]:
    """Settings and loader for a run, failing (exit 2) at once on an unknown model or no data."""
    settings = settings_from(args)
    if check_models:
        parse_models(args.model)
    loader = CryptoLoader(settings.data_dir, to_date=to_date, cache_dir=settings.cache_dir)
    if not args.coins:
        loader.get_crypto_names()
    return settings, loader


def coin_list(spec: str | None) -> list[str] | None:
    """``--coins a,b`` as a list; None for every coin."""
    return [c.strip() for c in spec.split(",") if c.strip()] if spec else None


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


def stop_on_signals(manager: Stoppable) -> None:
    """Ctrl-C and SIGTERM stop the run: at once, and by flag should the exception be lost."""

    def handler(signum: int, frame: object) -> None:
        manager.request_stop()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
