"""Coin ids: what a file name or a coin column's value becomes (no pandas here, so that
listing and looking up coins stays cheap)."""

from __future__ import annotations


def coin_id(stem: str) -> str:
    """``Bitcoin Cash`` -> ``bitcoin_cash``: the id a coin's file name gives it."""
    return "_".join(stem.strip().lower().split())
