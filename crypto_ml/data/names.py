"""Coin ids: what a file name or a coin column's value becomes (no pandas here, so that
listing and looking up coins stays cheap)."""

from __future__ import annotations

from crypto_ml.core.errors import ConfigError

#: The endings of a price file in a data folder (any case): one coin each.
SUFFIXES = (".csv", ".parquet", ".pq")


def coin_id(stem: str) -> str:
    """``Bitcoin Cash`` -> ``bitcoin_cash``: the id a coin's file name gives it; ConfigError
    for anything but text (a coin is asked for by its name or id)."""
    if not isinstance(stem, str):
        raise ConfigError(f"a coin is named by text (its name or id), got {stem!r}")
    return "_".join(stem.strip().lower().split())
