"""A soft time limit that lands inside an import waits for it (crypto_ml/worker/imports.py):
pure code, in this process; tests/test_security.py shows it in a real pool process."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_ml.worker.imports import SOFT_LIMIT_SIGNAL, WholeImport, install


class Limit(Exception):
    """What the soft-limit handler raises (Celery's SoftTimeLimitExceeded, here)."""


@pytest.fixture()
def self_signalling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module that sends the soft-limit signal to its own process halfway through its import,
    with a handler that raises :class:`Limit`."""
    assert SOFT_LIMIT_SIGNAL is not None
    (tmp_path / "halfway.py").write_text(
        "import os, signal\nFIRST = True\n"
        f"os.kill(os.getpid(), {int(SOFT_LIMIT_SIGNAL)})\nfor _ in range(1000):\n    pass\n"
        "SECOND = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def handler(signum: int, frame: object) -> None:
        raise Limit()

    previous = signal.signal(SOFT_LIMIT_SIGNAL, handler)
    yield "halfway"
    signal.signal(SOFT_LIMIT_SIGNAL, previous)
    sys.modules.pop("halfway", None)


def test_without_it_the_limit_lands_mid_import(self_signalling: str) -> None:
    with pytest.raises(Limit):
        __import__(self_signalling)
    assert self_signalling not in sys.modules  # the import was cut short


def test_the_limit_waits_for_the_import_then_stops_the_task(self_signalling: str) -> None:
    with pytest.raises(Limit), WholeImport():
        __import__(self_signalling)
    assert sys.modules[self_signalling].SECOND  # imported whole, then the limit was raised


def test_nested_imports_hold_it_until_the_outermost_ends(self_signalling: str) -> None:
    handler = signal.getsignal(SOFT_LIMIT_SIGNAL)
    inner_ended = False
    with pytest.raises(Limit), WholeImport():
        with WholeImport():
            os.kill(os.getpid(), SOFT_LIMIT_SIGNAL)
            for _ in range(1000):
                pass
        inner_ended = True  # not raised when the inner one ended
    assert inner_ended
    assert signal.getsignal(SOFT_LIMIT_SIGNAL) is handler  # the task's handler is back


@pytest.fixture()
def installed() -> Iterator[None]:
    """:func:`install` in this process, undone afterwards."""
    import builtins
    import importlib

    saved = builtins.__import__, importlib.import_module
    install()
    yield
    builtins.__import__, importlib.import_module = saved


def test_a_submodule_of_a_loaded_package_is_still_imported_whole(
        self_signalling: str, tmp_path: Path, installed: None) -> None:
    package = tmp_path / "loadedpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (tmp_path / f"{self_signalling}.py").rename(package / f"{self_signalling}.py")
    import loadedpkg  # noqa: F401  # the package is loaded: only its submodule is new

    try:
        with pytest.raises(Limit):
            exec(f"from loadedpkg import {self_signalling}")
        assert sys.modules[f"loadedpkg.{self_signalling}"].SECOND  # whole, then the limit
        exec(f"from loadedpkg import {self_signalling}")  # loaded now: a plain lookup
    finally:
        for name in ("loadedpkg", f"loadedpkg.{self_signalling}"):
            sys.modules.pop(name, None)
