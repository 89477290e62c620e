"""A suite-level check: no process started by the tests outlives them.

At the session's start every test process is marked by an environment variable that its
children inherit (:data:`MARK`; not a ``CRYPTO_ML_*`` name, which the CLI tests strip). At
the end, any process still carrying the mark (a worker, a Redis, a Flower that a test or the
product failed to stop) is named, killed, and the session fails.
"""

from __future__ import annotations

import os
import time
import uuid

import psutil

MARK = "PYTEST_CRYPTO_ML_SESSION"
GRACE_SECONDS = 15.0  # processes being stopped as the last test ends


def mark_session() -> str:
    """Mark this process (and so every process it starts) as the session's."""
    os.environ[MARK] = uuid.uuid4().hex
    return os.environ[MARK]


def leftovers(mark: str) -> list[psutil.Process]:
    """Live processes but this one that carry ``mark``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def reap(mark: str) -> list[str]:
    """Wait a grace period for the session's processes to go, then kill and name the rest."""
    deadline = time.monotonic() + GRACE_SECONDS
    left = leftovers(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftovers(mark)
    named = []
    for proc in left:
        try:
            named.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            continue
    return named
