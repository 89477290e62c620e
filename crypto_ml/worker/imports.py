"""A soft time limit never lands inside an import.

Celery's soft time limit is a signal (``SIGUSR1`` in a prefork pool process) whose handler
raises ``SoftTimeLimitExceeded`` wherever the task happens to be. Landing inside an import
(Keras takes seconds to load on a busy node), it leaves that module half-initialised, and the
modules that bound it meanwhile keep the half one: every later task in that process fails
(seen: ``module 'matplotlib' has no attribute 'get_data_path'``; reproduced: ``partially
initialized module 'pandas' has no attribute 'core'``).

:func:`install`, run in each pool process, makes imports whole for that signal: one that
arrives while an import runs is held, and its handler runs as soon as the outermost import has
finished. The task still stops at its soft limit (later by the rest of that import at most;
the hard limit still bounds it) and the process keeps only whole modules.
"""

from __future__ import annotations

import builtins
import importlib
import logging
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

SOFT_LIMIT_SIGNAL = getattr(signal, "SIGUSR1", None)
_MARK = "_crypto_ml_whole_imports"


class WholeImport:
    """Within it, the soft-limit signal's handler is held until the outermost one exits."""

    depth = 0  # imports under way in the main thread (one process: class state)

    def __enter__(self) -> None:
        # handlers run in the main thread only: other threads' imports need no holding
        self.counted = (SOFT_LIMIT_SIGNAL is not None
                        and threading.current_thread() is threading.main_thread())
        if not self.counted:
            return
        assert SOFT_LIMIT_SIGNAL is not None  # counted says so
        WholeImport.depth += 1
        self.outer = WholeImport.depth == 1
        if self.outer:
            self.held: list[int] = []
            self.handler = signal.getsignal(SOFT_LIMIT_SIGNAL)
            signal.signal(SOFT_LIMIT_SIGNAL, self._hold)

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.held.append(signum)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.counted:
            return
        assert SOFT_LIMIT_SIGNAL is not None  # counted says so
        WholeImport.depth -= 1
        if not self.outer:
            return
        signal.signal(SOFT_LIMIT_SIGNAL, self.handler)
        if self.held and callable(self.handler):
            log.warning("the soft time limit came during an import: raised once it finished")
            self.handler(SOFT_LIMIT_SIGNAL, None)


def _loaded(name: str, fromlist: Any) -> bool:
    """Whether ``import name`` / ``from name import ...`` only looks names up: the module is
    in ``sys.modules`` and holds every name of ``fromlist`` already (no submodule to load)."""
    module = sys.modules.get(name)
    if module is None:
        return False
    names = getattr(module, "__dict__", {})
    return all(item in names for item in fromlist or ())


def install() -> None:
    """Wrap ``__import__`` and ``importlib.import_module`` in :class:`WholeImport` (once)."""
    if getattr(builtins.__import__, _MARK, False):
        return
    plain_import, plain_import_module = builtins.__import__, importlib.import_module

    def whole_import(name: str, globals: Any = None, locals: Any = None,
                     fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and _loaded(name, fromlist):  # a lookup: no module code runs
            return plain_import(name, globals, locals, fromlist, level)
        with WholeImport():
            return plain_import(name, globals, locals, fromlist, level)

    def whole_import_module(name: str, package: str | None = None) -> Any:
        with WholeImport():
            return plain_import_module(name, package)

    setattr(whole_import, _MARK, True)
    builtins.__import__ = whole_import
    importlib.import_module = whole_import_module
