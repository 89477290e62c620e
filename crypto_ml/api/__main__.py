"""``python -m crypto_ml.api [--host 127.0.0.1] [--port 8000]``: serve the HTTP API.

An entry point above every layer (like ``crypto_ml.manager``): with
``CRYPTO_ML_BROKER_URL`` (or ``--broker``) it queues on that cluster; with none it
starts the embedded local cluster (real Redis + workers, as ``send-tasks`` does)
and stops it on exit. ``--in-process`` runs the models in the API process instead,
with no cluster (to measure what the queue costs). Listening anywhere but
loopback needs ``CRYPTO_ML_API_KEYS``. Exit codes (:func:`crypto_ml.cli.guarded`):
0 stopped (Ctrl-C, SIGTERM); 1 the embedded cluster's Redis exited (the API stops, so a
supervisor restarts it whole); 2 configuration error (no keys off loopback, port in use).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import uvicorn

from crypto_ml.api.app import create_app
from crypto_ml.api.job_files import jobs_folder_problem
from crypto_ml.api.service import InProcessRuns, QueueRuns
from crypto_ml.cli import Parser, guarded
from crypto_ml.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    add_cluster_options,
    add_log_options,
    port_number,
    stop_on,
)
from crypto_ml.cli.requests import settings_from
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.logs import configure
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.connect import open_cluster
from crypto_ml.ops.processes import listen_problem
from crypto_ml.worker.app import create_app as celery_app
from crypto_ml.worker.model_store import open_store

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m crypto_ml.api",
                    description="Serve forecasts over HTTP (docs at /docs).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (127.0.0.1; others need CRYPTO_ML_API_KEYS)")
    parser.add_argument("--port", type=port_number, default=8000, help="(8000)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the models in this process, no broker or workers (benchmarks)")
    add_cluster_options(parser)  # --broker, --timeout (task expiry), --data-dir, --workers
    add_log_options(parser)  # the API logs at info unless told otherwise
    return parser


def say(line: str) -> None:
    """A notice of the server's (start, embedded cluster, stop): on stderr, as the CLI's."""
    print(line, file=sys.stderr, flush=True)


def check_exposure(host: str, settings: Settings) -> None:
    """Refuse a non-loopback address without API keys, as Flower does without its password."""
    if host not in LOOPBACK and not settings.api_keys:
        raise ConfigError(f"refusing to serve the API on {host} without authentication; set "
                          "CRYPTO_ML_API_KEYS=key1[,key2] (or listen on 127.0.0.1)")


@contextlib.contextmanager
def runs_for(settings: Settings, in_process: bool, expires: float
             ) -> Iterator[tuple[Any, LocalCluster | None]]:
    """Where the API's runs go: in-process, the configured broker, or an embedded cluster
    (and that cluster)."""
    if in_process:
        store = open_store(settings.model_store, None, settings.model_store_ttl,
                           settings.sentinel_master, settings.sentinel_password)
        yield InProcessRuns(store), None
        return
    with open_cluster(settings, say) as (live, cluster):
        # one shared message in flight per task slot of the live workers (embedded or not):
        # the most forecasts a message, with every worker busy (2 workers, one-coin load: 2 in
        # flight 650 req/s, 3: 600, 4: 610)
        runs = QueueRuns(celery_app(live), live, expires)
        try:
            yield runs, cluster
        finally:
            runs.close()


class StoppingServer(uvicorn.Server):
    """uvicorn's server, calling ``on_stop()`` on its event loop as its drain begins (the
    bodies still arriving are refused then, not waited for until the drain is cut short)."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_stop()
        await super().shutdown(sockets)


def watch_redis(cluster: LocalCluster, server: uvicorn.Server, lost: list[str]) -> None:
    """Stop ``server`` once the embedded cluster's Redis has exited (killed, out of memory):
    every request would get 503 until someone restarted the API by hand, and a supervisor
    sees a process that runs. Why goes into ``lost``."""
    while not server.should_exit:
        if (why := cluster.lost()) is not None:
            lost.append(f"{why}; the API stops: start it again (its runs and queued work are "
                        "gone)")
            server.should_exit = True
            return
        time.sleep(1.0)


def cannot_listen(args: argparse.Namespace) -> ConfigError:
    return ConfigError(f"could not listen on {args.host}:{args.port} (the port is in use, or "
                       "the address is not one of this machine's)")


def serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM, then stop the embedded cluster (if any)."""
    settings = settings_from(args)
    level = "error" if args.quiet else (args.log_level or "info")
    configure(settings.log_format, level.upper(), sys.stderr)
    check_exposure(args.host, settings)
    if listen_problem(args.host, args.port) is not None:  # before the embedded cluster starts
        raise cannot_listen(args)
    if not args.in_process and (why := jobs_folder_problem(settings.api_jobs_dir, make=False)):
        say(f"crypto-ml: warning: {why}: POST /v1/jobs answers 503 until it can be")
    lost: list[str] = []
    with runs_for(settings, args.in_process, args.timeout) as (runs, cluster):
        app = create_app(settings, runs)
        server = StoppingServer(uvicorn.Config(
            app, host=args.host, port=args.port, log_level="warning", access_log=False,
            timeout_keep_alive=30, timeout_graceful_shutdown=10), app.state.bodies.stop)
        say(f"crypto-ml API on http://{args.host}:{args.port} (docs: /docs)")
        if cluster is not None:
            threading.Thread(target=watch_redis, args=(cluster, server, lost), daemon=True,
                             name="redis-watch").start()
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # drained, as on SIGTERM
            signal.signal(signal.SIGHUP, server.handle_exit)
        try:
            server.run()  # after a graceful stop uvicorn re-raises the signal it caught
        except SystemExit:  # uvicorn exits 1 when it cannot bind
            if not server.started:
                raise cannot_listen(args) from None
            raise
        finally:
            if server.started:
                say("crypto-ml API stopped")
        if not server.started:
            raise cannot_listen(args)
    for line in lost:
        print(f"crypto-ml: error: {line}", file=sys.stderr)
    return EXIT_FAILED if lost else EXIT_OK


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_on(_stop)  # SIGTERM and SIGHUP stop like Ctrl-C: the cluster goes too
    return guarded(lambda: serve(args), interrupted=None)


if __name__ == "__main__":
    sys.exit(main())
