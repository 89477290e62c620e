"""``crypto-ml flower [FLOWER OPTIONS]``: Flower for the configured broker, secured by the settings.

Options this command does not know go to ``celery flower`` unchanged.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from crypto_ml.core.acl import check_credentials
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.ops.flower import flower_command, flower_env


def add_parser(sub: Any) -> None:
    """``flower``: other options pass through to Flower."""
    flower = sub.add_parser("flower", help="run Flower for CRYPTO_ML_BROKER_URL (port, address "
                            "and auth from CRYPTO_ML_FLOWER_*; other options go to Flower)")
    flower.set_defaults(run=flower_main, pass_through=True, log_level="warning", log_format=None,
                        interrupted=None)


def flower_main(args: argparse.Namespace) -> int:
    """Replace this process with ``celery -A crypto_ml flower``."""
    settings = Settings.from_env()
    if not settings.broker_url:
        raise ConfigError("set CRYPTO_ML_BROKER_URL to the broker Flower should watch")
    env = flower_env(settings, os.environ)
    check_credentials(settings.broker_url)  # wrong user or password: say so and stop
    cmd = [*flower_command(settings), *args.extra]
    os.execve(cmd[0], cmd, env)
    return 0  # pragma: no cover - execve does not return
