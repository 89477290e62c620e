"""``crypto-ml queue-depth --port 9808``: serve each queue's depth as JSON for KEDA."""

from __future__ import annotations

import argparse
from typing import Any

from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from crypto_ml.cli.helptext import help_texts
from crypto_ml.cli.options import EXIT_OK, add_log_options, port_number
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.logins import auth_failure, check_credentials
from crypto_ml.core.sentinel import redis_client
from crypto_ml.core.settings import Settings
from crypto_ml.core.urls import safe_url
from crypto_ml.ops.queue_depth import DEFAULT_PORT, make_server, queue_depths
from crypto_ml.worker.app import CPU_QUEUE, GPU_QUEUE


def add_parser(sub: Any) -> None:
    """``queue-depth`` and its options."""
    qd = sub.add_parser("queue-depth", help="serve per-queue depth (waiting + reserved tasks) "
                        "of the broker as JSON, for autoscalers", **help_texts("queue-depth"))
    qd.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                    help=f"the port to serve the depth on ({DEFAULT_PORT})")
    qd.add_argument("--broker", help="Redis URL to watch (default: CRYPTO_ML_BROKER_URL)")
    qd.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    qd.add_argument("--queues", default=f"{CPU_QUEUE},{GPU_QUEUE}",
                    help="comma list of queues to report (cpu,gpu)")
    add_log_options(qd, "also crypto_ml's info logs")
    qd.set_defaults(run=queue_depth_main, interrupted=None)


def queue_depth_main(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    settings = Settings.from_env().with_broker(args.broker)
    if not settings.broker_url:
        raise ConfigError("set CRYPTO_ML_BROKER_URL (or --broker) to the Redis broker to watch")
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if not queues:
        raise ConfigError("--queues names no queue; give one or more, e.g. --queues cpu,gpu")
    check_credentials(settings.broker_url)  # wrong user or password: say so and stop
    client = redis_client(settings.broker_url, settings.sentinel_master,
                          settings.sentinel_password, socket_connect_timeout=5, socket_timeout=5)
    try:
        queue_depths(client, queues)  # a user that may not read them: say so now, not per scrape
    except AuthenticationError as exc:  # (through Sentinel: the check above cannot see it)
        raise auth_failure(settings.broker_url, exc) from None
    except NoPermissionError as exc:
        raise ConfigError(f"{safe_url(settings.broker_url)}: {exc}; give the URL of a user that "
                          "may read the queues, such as user exporter's (docs/least-privilege.md)"
                          ) from None
    except (RedisError, OSError):
        pass  # not reachable now: each scrape answers 503 until it is
    try:
        server = make_server(client, queues, args.port, args.host)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc}; choose another "
                          "--port (or --host)") from None
    print(f"serving queue depth of {', '.join(queues)} on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return EXIT_OK  # pragma: no cover - only Ctrl-C or SIGTERM end serve_forever
