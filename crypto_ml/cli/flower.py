"""``crypto-ml flower [FLOWER OPTIONS]``: Flower for the configured broker, secured by the settings.

Options this command does not know go to ``celery flower`` unchanged; ``-h`` shows them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from crypto_ml.cli.options import EXIT_OK
from crypto_ml.core.acl import FLOWER
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.logins import wrong_user
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.connect import check_broker
from crypto_ml.ops.flower import check_listen, flower_command, flower_env

EPILOG = """Flower's own options (below) pass through unchanged as --name=value, e.g.
--max-tasks=10000; port, address and login come from CRYPTO_ML_FLOWER_PORT (5555),
CRYPTO_ML_FLOWER_ADDRESS (127.0.0.1) and CRYPTO_ML_FLOWER_BASIC_AUTH (user:password; required
off 127.0.0.1), never from options (--port, --address, --basic-auth, --auth are refused);
an option Flower does not have, or a value of the wrong type, is refused before it starts.

examples:
  CRYPTO_ML_BROKER_URL=redis://flower:PASSWORD@HOST:6379/0 crypto-ml flower
  crypto-ml flower --broker redis://flower:PASSWORD@HOST:6379/0
  crypto-ml flower --max-tasks=10000 --purge-offline-workers=60

exit codes: 0 stopped (Ctrl-C, SIGTERM); 2 no broker, one that does not answer, or its user
or password is wrong.
"""


def add_parser(sub: Any) -> None:
    """``flower``: other options pass through to Flower (``-h`` too: shown with Flower's own)."""
    flower = sub.add_parser(
        "flower", add_help=False, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run Flower for CRYPTO_ML_BROKER_URL (port, address and auth from "
        "CRYPTO_ML_FLOWER_*; other options go to Flower)",
        description="Run Flower, Celery's web monitor, for the broker of CRYPTO_ML_BROKER_URL, "
        "secured by the settings (basic auth), until Ctrl-C.")
    flower.set_defaults(run=flower_main, pass_through=True, log_level="warning", log_format=None,
                        interrupted=None, usage=flower.format_help)


def flower_main(args: argparse.Namespace) -> int:
    """Replace this process with ``celery -A crypto_ml flower`` (``-h``: print the options)."""
    if any(word in ("-h", "--help") or word.startswith("--help=") for word in args.extra):
        print(args.usage(), end="", flush=True)
        print(flower_options(), flush=True)
        return EXIT_OK
    broker, extra = take_broker(args.extra)
    check_pass_through(extra)
    settings = Settings.from_env().with_broker(broker)
    if not settings.broker_url:
        raise ConfigError("set CRYPTO_ML_BROKER_URL (or --broker) to the broker Flower should "
                          "watch")
    check_user(settings.broker_url)
    env = flower_env(settings, os.environ)
    # unreachable, or its login wrong: say so and stop (Flower itself retries forever)
    check_broker(settings.broker_url, settings, hint="or fix --broker / CRYPTO_ML_BROKER_URL")
    check_listen(settings.flower_address, settings.flower_port)
    cmd = flower_command(settings, extra)
    os.execve(cmd[0], cmd, env)
    return 0  # pragma: no cover - execve does not return


#: Flower options the settings own (tornado takes ``_`` and ``-`` alike): given as options they
#: would win over the checked settings (an address off 127.0.0.1 with no login, a port in use)
OWNED = {"port": "CRYPTO_ML_FLOWER_PORT", "address": "CRYPTO_ML_FLOWER_ADDRESS",
         "basic_auth": "CRYPTO_ML_FLOWER_BASIC_AUTH", "auth": "CRYPTO_ML_FLOWER_BASIC_AUTH",
         "unix_socket": "CRYPTO_ML_FLOWER_ADDRESS and CRYPTO_ML_FLOWER_PORT",
         "conf": "the CRYPTO_ML_FLOWER_ settings (a config file could set any of them)"}


def check_pass_through(extra: list[str]) -> None:
    """ConfigError for an option passed to Flower that the settings own, or a value given as a
    word of its own (Flower's options parser takes ``--name=value`` only, and stops with a
    traceback otherwise)."""
    for at, word in enumerate(extra):
        if not word.startswith("--"):
            before = extra[at - 1] if at else ""
            write = f": write {before}={word}" if before.startswith("--") and "=" not in before \
                else f", and {word!r} is none"
            raise ConfigError(f"Flower takes its options as --name=value{write} (crypto-ml "
                              "flower -h lists them)")
        name = word.lstrip("-").split("=", 1)[0].replace("-", "_")  # as tornado reads it
        if name in OWNED:
            raise ConfigError(f"{word.split('=')[0]} is set by {OWNED[name]} here, where it "
                              "is checked (a login off 127.0.0.1, a free port); set that instead")
    check_flower_reads(extra)


def check_flower_reads(extra: list[str]) -> None:
    """ConfigError for an option Flower's own parser (tornado's) would stop on with a
    traceback (a value of the wrong type) or pass over without a word (no such option)."""
    import flower.options  # noqa: F401  (lazy, 0.1 s: defines Flower's options on tornado's)
    from tornado.options import Error, options

    for word in extra:
        option, _, value = word.partition("=")
        if option.lstrip("-") not in options:  # tornado's own error prints its whole help
            raise ConfigError(f"Flower has no option {option} (crypto-ml flower -h lists "
                              "them)")
        try:
            options.parse_command_line(["flower", word], final=False)  # this process execs next
        except Error as exc:  # a value left out: "Option 'max-tasks' requires a value"
            raise ConfigError(f"Flower's {option}: {exc} (write {option}=VALUE)") from None
        except ValueError as exc:
            raise ConfigError(f"Flower's {option} cannot take {value!r} ({exc}; crypto-ml "
                              "flower -h lists its options)") from None


def check_user(url: str) -> None:
    """ConfigError for the URL of one of our Redis users that may not read Flower's events
    (the manager's, which ``cluster up`` says to export): Flower would show nothing and log
    NOPERM every second."""
    if (why := wrong_user(url, FLOWER, "read the events Flower watches")) is not None:
        raise ConfigError(why)


def take_broker(extra: list[str]) -> tuple[str | None, list[str]]:
    """``--broker URL`` (or ``--broker=URL``), as every other command takes it, out of the
    options passed through to Flower; the last one given wins."""
    broker, rest, words = None, [], iter(extra)
    for word in words:
        if word == "--broker":
            broker = next(words, None)
            if broker is None:
                raise ConfigError("--broker needs a Redis URL")
        elif word.startswith("--broker="):
            broker = word.split("=", 1)[1]
        else:
            rest.append(word)
    return broker, rest


def flower_options() -> str:
    """Flower's own options, as ``celery flower -- --help`` lists them (no broker needed)."""
    env = {**os.environ, "CRYPTO_ML_BROKER_URL": "redis://127.0.0.1:6379/0"}  # help only
    try:
        shown = subprocess.run([sys.executable, "-m", "celery", "-A", "crypto_ml", "flower",
                                "--", "--help"], env=env, capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Flower's options: cannot list them ({exc}); see `celery flower -- --help`"
    out = shown.stdout + shown.stderr
    start = out.find("flower/options.py options:")
    if start < 0:
        return "Flower's options: see `celery flower -- --help`"
    section = out[start:].split("\n", 1)[1]
    end = section.find(" options:\n")
    section = section[: section.rfind("\n", 0, end)] if end >= 0 else section
    return "flower options (passed to Flower):\n" + section.rstrip() + "\n"
