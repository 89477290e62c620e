"""Child processes that cannot outlive us: start in their own session, stop by process group.

Shared by the embedded cluster (:mod:`crypto_ml.dispatch.cluster`) and Flower
(:mod:`crypto_ml.ops.flower`): every process is started in its own session and
asked to die with its parent (Linux), and :func:`terminate` ends its whole group.
:func:`kill_spawned` ends every group this process started at once (a second Ctrl-C).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from crypto_ml.core.errors import ConfigError

STOP_TIMEOUT = 15.0
#: Every process :func:`spawn` started that had not exited when last looked at.
_SPAWNED: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listen_problem(address: str, port: int) -> str | None:
    """Why a server could not listen on ``address:port`` now (a port in use, an address this
    machine does not have), in the system's words; None when it could."""
    try:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.create_server((address, port), family=family):
            return None
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)  # not create_server's text


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Fork:
    """Whether the main thread is in :func:`spawn`'s fork, and whether a stop signal came
    meanwhile. A KeyboardInterrupt raised there lands in the fork's hooks (logging's lock),
    which print it as "Exception ignored ... Traceback" and drop it; spawn raises it instead,
    once the child is started (and known to :func:`kill_spawned`)."""

    now = False
    interrupted = False


def interrupt_later() -> bool:
    """For a stop signal's handler: True, and remembered, while the main thread forks (the
    handler must not raise now: :func:`spawn` raises KeyboardInterrupt when the fork is done)."""
    _Fork.interrupted = _Fork.interrupted or _Fork.now
    return _Fork.now


def spawn(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, output to ``log_path``, ending it if we die."""
    main = threading.current_thread() is threading.main_thread()  # where signals are handled
    with open(log_path, "ab") as log:
        _Fork.now = main
        try:
            proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                    preexec_fn=_die_with_parent)
        finally:
            _Fork.now = False
    _SPAWNED[:] = [p for p in _SPAWNED if p.returncode is None]
    _SPAWNED.append(proc)
    if main and _Fork.interrupted:
        _Fork.interrupted = False
        raise KeyboardInterrupt
    return proc


def kill_spawned() -> int:
    """SIGKILL the process group of every process :func:`spawn` started that has not been
    reaped (safe in a signal handler: no waiting); how many groups were signalled."""
    killed = 0
    for proc in list(_SPAWNED):
        if proc.returncode is None:  # not reaped: its pid (and group) is still its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
                killed += 1
    return killed


def terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited in ``timeout`` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stray pool children, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGKILL every process group at once, then reap them (no grace period to wait out)."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               alive: Callable[[], str | None] = lambda: None, most: float = 0.25) -> None:
    """Poll ``condition`` until true, every 20 ms at first, backing off to every ``most``
    seconds; ConfigError naming ``what`` on timeout or death."""
    deadline = time.monotonic() + timeout
    delay = min(0.02, most)
    while not condition():
        died = alive()
        if died:
            raise ConfigError(f"{what} failed: {died}")
        if time.monotonic() > deadline:
            raise ConfigError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, most)
