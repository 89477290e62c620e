"""Checks of a broker URL's Redis user before any work: its password (Redis refuses it) and
its role (another of our users than the one the command needs, :mod:`crypto_ml.core.acl`)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from crypto_ml.core.acl import ADMIN, BREAK_GLASS, ROLES, Role
from crypto_ml.core.errors import BrokerAuthFailed
from crypto_ml.core.urls import safe_url


def auth_failure(url: str, exc: Exception) -> BrokerAuthFailed:
    """The error for Redis refusing ``url``'s credentials: which user, never the password."""
    user = unquote(urlsplit(url).username or "") or ADMIN
    role = ROLES.get(user)
    secret = f" ({role.password_variable} of the deployment)" if role else ""
    return BrokerAuthFailed(
        f"Redis at {safe_url(url)} refused user {user!r} ({exc}); set that user's "
        f"password{secret} in the URL (CRYPTO_ML_BROKER_URL or --broker); users and how to "
        "rotate their passwords: docs/least-privilege.md")


def wrong_user(url: str, wanted: Role, may_not: str) -> str | None:
    """Why ``url``, the URL of another of our Redis users than ``wanted`` (the admin aside),
    cannot serve where ``wanted``'s is needed (that user ``may_not`` ...); None if it can."""
    try:
        user = unquote(urlsplit(url).username or "")
    except ValueError:  # not a URL: the connection says so
        return None
    if user not in ROLES or user in (ADMIN, BREAK_GLASS, wanted.name):  # (those two: all rights)
        return None
    return (f"the broker URL is Redis user {user}'s, which may not {may_not}; give user "
            f"{wanted.name}'s URL (`crypto-ml cluster up` prints it as `{wanted.name}: "
            f"redis://{wanted.name}:...`)")


def check_credentials(url: str, timeout: float = 5.0) -> None:
    """Raise :class:`BrokerAuthFailed` at once if Redis refuses ``url``'s user or password.

    An unreachable Redis is not an error here: callers wait or retry for that.
    """
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                  socket_timeout=timeout) as client:
            client.ping()
    except redis.AuthenticationError as exc:
        raise auth_failure(url, exc) from None
    except (redis.RedisError, OSError, ValueError):
        return
