"""``crypto-ml cluster up``: a local Redis + Celery worker cluster, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from crypto_ml.cli.helptext import help_texts
from crypto_ml.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    add_log_options,
    positive_int,
    stop_on,
    stop_on_signals,
)
from crypto_ml.core import acl
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster

#: Seconds between looks at the cluster's processes.
WATCH_SECONDS = 1.0


def add_parser(sub: Any) -> None:
    """``cluster up`` and its options."""
    cluster = sub.add_parser("cluster", help="run a local Redis + Celery worker cluster",
                             **help_texts("cluster"))
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="{up}")
    up = cluster_sub.add_parser("up", help="start the cluster and keep it running until Ctrl-C",
                                **help_texts("cluster"))
    up.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                    help="worker processes (default: one per core)")
    up.add_argument("--flower", action="store_true",
                    help="also start Flower (CRYPTO_ML_FLOWER_PORT, default 5555)")
    add_log_options(up, "also the cluster's info logs")
    up.set_defaults(run=up_main, interrupted="local cluster stopped")


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_OK)


def up_main(args: argparse.Namespace) -> int:
    """Start the cluster, print the broker URL to export, wait until stopped."""
    flower = Settings.from_env() if args.flower else None
    stop_on_signals(None)  # a second Ctrl-C while it stops kills what is left at once
    stop_on(_stopped)  # a supervisor's stop (or a closed terminal) is a clean one: exit 0
    with LocalCluster(workers=args.workers, flower=flower) as cluster:
        print(f"local cluster up: redis + {args.workers} worker(s) in "
              f"{cluster.startup_seconds:.1f} s; logs in {cluster.workdir}", flush=True)
        print(f"export CRYPTO_ML_BROKER_URL='{cluster.url_for('manager')}'", flush=True)
        if cluster.flower_url:  # managers sending here emit task-sent events for Flower too
            print("export CRYPTO_ML_TASK_EVENTS=1", flush=True)
        print("that is Redis user manager; the others (crypto_ml/core/acl.py):", flush=True)
        for role in cluster.roles:
            if role != "manager":
                url = cluster.broker_url if role == acl.ADMIN else cluster.url_for(role)
                print(f"  {role}: {url}", flush=True)
        if cluster.flower_url:
            print(f"flower: {cluster.flower_url}", flush=True)
        print("press Ctrl-C to stop", flush=True)
        return watch(cluster)


def watch(cluster: LocalCluster) -> int:
    """Until stopped: say each worker that exits, and Flower, once; stop (exit 1) when Redis
    exits, which nothing then can use (a supervisor restarts the command)."""
    said: set[str] = set()
    flower = cluster.flower
    while (why := cluster.lost()) is None:
        dead = cluster.dead_workers()
        for name in dead.keys() - said:
            print(f"crypto-ml: warning: worker {name} exited (code {dead[name]}); "
                  f"{len(cluster.workers) - len(dead)} of {len(cluster.workers)} left (logs in "
                  f"{cluster.workdir})", file=sys.stderr, flush=True)
        said |= dead.keys()
        if flower is not None and (how := flower.died()) is not None:
            print(f"crypto-ml: warning: Flower {how}; the cluster goes on without it",
                  file=sys.stderr, flush=True)
            flower = None  # said once
        time.sleep(WATCH_SECONDS)
    print(f"crypto-ml: error: {why}; the cluster stops: start it again", file=sys.stderr,
          flush=True)
    return EXIT_FAILED
