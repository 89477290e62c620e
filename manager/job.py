#!/usr/bin/env python3
"""Entry point of manager containers: run one forecast job on the cluster's workers.

    python manager/job.py [--broker-wait S] [--results-dir DIR] send-tasks [OPTIONS]

Runs ``python -m crypto_ml.manager send-tasks OPTIONS`` (same options and exit
codes: 0 all forecasts arrived, 1 some failed, 2 configuration error) with three
differences that suit a container:

* it refuses to run without a broker (``CRYPTO_ML_BROKER_URL`` or ``--broker``):
  in a container the embedded local cluster would silently do all the work;
* it waits up to ``--broker-wait`` seconds for Redis to answer, since the job may
  start before Redis is ready;
* with ``--results-dir`` and no ``--output`` it writes the results to
  ``DIR/forecasts-<UTC time>.json``, so scheduled runs do not overwrite each other (a
  table run, ``--input``, names its own ``--output OUT.parquet``: a rerun resumes it).

It does not wait for workers: tasks wait in their queue, which is what lets an
autoscaler start workers (GPU workers scale up from zero on queue length).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from kombu.utils.url import maybe_sanitize_url

from crypto_ml.cli import build_parser, guarded
from crypto_ml.cli import main as cli_main
from crypto_ml.cli.options import EXIT_CONFIG, EXIT_OK, path_option
from crypto_ml.cli.requests import settings_from
from crypto_ml.core.errors import BrokerAuthFailed, ConfigError, CryptoMLError
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.connect import check_broker
from crypto_ml.ops.processes import wait_until

PROG = "python -m crypto_ml.manager"


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manager/job.py", add_help=False,
        description="Run one send-tasks job against the configured broker "
                    "(options after send-tasks: see python -m crypto_ml.manager send-tasks -h).")
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument("--broker-wait", type=float, default=120.0,
                        help="seconds to wait for the broker to answer (120)")
    parser.add_argument("--results-dir", type=path_option,
                        help="write results to DIR/forecasts-<UTC time>.json")
    return parser


def broker_answers(url: str, settings: Settings) -> bool:
    try:
        check_broker(url, settings)  # settings: the Sentinel master's name and password
    except BrokerAuthFailed:
        raise  # Redis answered and refused the credentials: waiting will not help
    except CryptoMLError:
        return False
    return True


def wait_for_broker(cli_args: argparse.Namespace, seconds: float) -> int:
    """ConfigError unless a broker is configured and answers within ``seconds``."""
    settings = settings_from(cli_args)
    if not settings.broker_url:
        raise ConfigError("no broker configured: set CRYPTO_ML_BROKER_URL (or --broker) "
                          "to the cluster's Redis; a job container never runs an "
                          "embedded local cluster")
    url = settings.broker_url
    wait_until(lambda: broker_answers(url, settings), seconds,
               f"an answer from the broker at {maybe_sanitize_url(url)} (--broker-wait)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser()
    args, rest = parser.parse_known_args(argv)
    cli_args = build_parser(PROG).parse_args(rest) if rest else None  # a typo exits 2 here
    if args.help or cli_args is None:
        parser.print_help()
        return 0 if args.help else EXIT_CONFIG
    code = guarded(lambda: wait_for_broker(cli_args, args.broker_wait), "nothing was sent")
    if code != EXIT_OK:
        return code
    if args.results_dir is not None and "--output" not in rest:  # a table run names its own
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        rest = [*rest, "--output", str(args.results_dir / f"forecasts-{stamp}.json")]
    return cli_main(rest, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
