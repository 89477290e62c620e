"""The worker containers' entry point: start Celery workers sized for the hardware, or ping them.

    python -m crypto_ml.worker start [--role auto|cpu|gpu] [--queues Q] [--concurrency N] [-- ARGS]
    python -m crypto_ml.worker ping [--timeout S]

(``python workers/worker.py ...``, what the images and manifests run, is the same command.)

``start`` (role ``auto`` picks ``gpu`` when a GPU is visible, else ``cpu``) starts the nodes
that :func:`crypto_ml.worker.nodes.plan` sizes for this container: one ``cpu@HOST`` node with
a process per usable core, or one ``gpu<i>@HOST`` node per visible GPU. With one node the
worker replaces this process; with several this process starts one worker per node, forwards
SIGTERM/SIGINT to them and stops them all when one exits (:func:`supervise`). Arguments
after ``--`` go to ``celery worker`` unchanged. The broker and every other setting come
from the ``CRYPTO_ML_*`` environment (see :mod:`crypto_ml.core.settings`).

``start`` writes the node names to a state file in the temporary directory;
``ping`` (the container's health check) sends ``celery inspect ping`` to exactly
those nodes and exits 0 only if every one answers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from crypto_ml.cli import Parser, guarded
from crypto_ml.cli.options import positive_seconds
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.worker.app import celery_config
from crypto_ml.worker.nodes import node_env, plan, usable_cores, visible_gpus

PROG = "python -m crypto_ml.worker"


def state_path() -> Path:
    """Where ``start`` records its node names for ``ping`` (honours TMPDIR)."""
    return Path(tempfile.gettempdir()) / "crypto-ml-worker.json"


def supervise(commands: Sequence[tuple[list[str], dict[str, str]]]) -> int:
    """Run several workers; forward SIGTERM/SIGINT; when one exits, stop the others.

    Each worker gets its own session, so a terminal's Ctrl-C reaches them once, through
    this process, instead of twice (a second SIGINT would make Celery stop at once).
    """
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop_all(signum: int = signal.SIGTERM, _frame: object = None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for cmd, env in commands:
        if not stopping:
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    _pid, status = os.wait()
    first = os.waitstatus_to_exitcode(status)
    stop_all()
    codes = [proc.wait() for proc in procs]
    worst = first or max(codes, key=abs, default=0)
    return 128 - worst if worst < 0 else worst


def start(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    env = dict(os.environ)
    celery_config(Settings.from_env(env))  # no broker, a wrong setting: one line, exit 2
    try:
        nodes = plan(args.role, visible_gpus(env), usable_cores(), socket.gethostname(),
                     args.queues, args.concurrency)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    commands = [(n.command(args.loglevel, extra), node_env(n, env)) for n in nodes]
    if args.dry_run:
        print(json.dumps([{"command": cmd, "env": {k: node_environment[k] for k in n.env}}
                          for n, (cmd, node_environment) in zip(nodes, commands, strict=True)],
                         indent=2))
        return 0
    state_path().write_text(json.dumps({"nodes": [n.name for n in nodes]}))
    described = ", ".join(f"{n.name} ({n.queues} x{n.concurrency})" for n in nodes)
    print(f"crypto-ml worker: starting {described}", flush=True)
    if len(commands) == 1:
        cmd, node_environment = commands[0]
        os.execve(cmd[0], cmd, node_environment)
    return supervise(commands)


def ping(args: argparse.Namespace) -> int:
    try:
        nodes = json.loads(state_path().read_text())["nodes"]
    except (OSError, ValueError, KeyError):
        print(f"crypto-ml worker: no worker was started here ({state_path()} missing)",
              file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "celery", "-A", "crypto_ml", "inspect", "ping",
           "--destination", ",".join(nodes), "--timeout", str(args.timeout), "--json"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout + 60)
        replies = json.loads(out.stdout or "{}")
    except (subprocess.TimeoutExpired, ValueError):
        replies = {}
    missing = sorted(set(nodes) - set(replies))
    if missing:
        print(f"crypto-ml worker: no pong from {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"crypto-ml worker: pong from {', '.join(nodes)}")
    return 0


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Start Celery workers sized for the hardware, or ping "
                    "them.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("start", help="start worker(s) for this hardware (arguments after -- "
                                       "go to celery worker)")
    run.add_argument("--role", choices=("auto", "cpu", "gpu"), default="auto",
                     help="cpu, gpu, or auto: gpu when a GPU is visible (auto)")
    run.add_argument("--queues", help="comma list of queues (cpu role: cpu,gpu; gpu role: gpu)")
    run.add_argument("--concurrency", type=int,
                     help="pool processes per node (cpu role: usable cores; gpu role: 1)")
    run.add_argument("--loglevel", default="INFO", help="celery log level (INFO)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the celery command(s) and environment instead of running them")
    check = sub.add_parser("ping", help="exit 0 if every worker this container started answers")
    check.add_argument("--timeout", type=positive_seconds, default=10.0,
                       help="seconds to wait for the answers (10)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """``start`` or ``ping`` with ``argv`` (``sys.argv[1:]``); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser(prog).parse_args(argv)
    if args.command == "start":
        return guarded(lambda: start(args, extra), interrupted="workers stopped")
    return ping(args)


if __name__ == "__main__":  # python -m crypto_ml.worker runs this module
    sys.exit(main())
