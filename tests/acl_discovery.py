"""What each Redis user really does: run the whole system and record every command by user.

    .venv/bin/python tests/acl_discovery.py [--strict]

starts a local cluster whose users (crypto_ml/core/acl.py) have every right (``--strict``:
the shipped rules), watches Redis with ``MONITOR`` while a full run happens --
``send-tasks`` (batched and single messages, one that times out and revokes),
``backtest``, the HTTP API (as the manager's user), Flower's pages and API, the
queue-depth exporter, KEDA's list-length read and the worker health check -- and prints,
per user, the commands, key and channel patterns seen, then what the shipped rules lack
(nothing, if they are right: each command on each key must be granted by one grant, as
Redis 7's selectors require) and the ``ACL LOG`` (refusals; empty, if they are right).
``--redis-server PATH`` runs another Redis (a 7.x: the deployments' rules, selectors
included). tests/test_acl.py runs the same with the shipped rules.

``MONITOR`` shows each command with the client's address, not its user; a thread
polls ``CLIENT LIST`` to map addresses to users (commands run by a Lua script count
for the user who called the script).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crypto_ml.core import acl  # noqa: E402
from crypto_ml.core.settings import Settings  # noqa: E402
from crypto_ml.dispatch.cluster import LocalCluster  # noqa: E402
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until  # noqa: E402

BACKTEST_DATA = ROOT / "tests" / "fixtures" / "backtest"
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SUBCOMMANDS = {"client", "script", "config", "acl", "command", "object", "memory", "xinfo"}
_CHANNEL_COMMANDS = {"publish", "subscribe", "psubscribe", "unsubscribe", "punsubscribe"}


def _unescape(text: str) -> str:
    """Undo Redis's sdscatrepr quoting of one MONITOR argument."""
    out, i = [], 0
    simple = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x":
                out.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append(simple.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def shape(name: str) -> str:
    """A key or channel with its variable parts (task ids, numbers) as ``*``."""
    name = _UUID.sub("*", name)
    return re.sub(r"(?<=[._:-])\d+$", "*", name)


@dataclass
class Usage:
    """What one user did: commands, key and channel names (as shapes), and counts."""

    commands: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)
    count: int = 0
    by_command: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


class Recorder:
    """MONITOR + CLIENT LIST on a running Redis: :attr:`usage` by user."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.users: dict[str, str] = {}  # "ip:port" -> user
        self.usage: dict[str, Usage] = defaultdict(Usage)
        self.unknown: list[str] = []
        self.keyless: set[str] = set()
        self.authenticated: set[str] = set()  # addresses that just ran AUTH
        self.raw: redis.connection.AbstractConnection | None = None  # for COMMAND GETKEYS
        self.stopping = threading.Event()
        self.last_script_user = "?"
        self.threads = [threading.Thread(target=self._monitor, daemon=True),
                        threading.Thread(target=self._poll_clients, daemon=True)]
        self.started = threading.Event()

    def __enter__(self) -> Recorder:
        for thread in self.threads:
            thread.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # the last lines of MONITOR
        self.stopping.set()
        with contextlib.suppress(redis.RedisError):
            self.client.ping()  # one more line, so the MONITOR thread sees it should stop
        for thread in self.threads:
            thread.join(5)

    def _refresh_clients(self) -> None:
        for info in self.client.client_list():
            self.users[info["addr"]] = info["user"]

    def _poll_clients(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(redis.RedisError):
                self._refresh_clients()
            time.sleep(0.005)

    def _monitor(self) -> None:
        conn = self.client.connection_pool.make_connection()
        conn.connect()
        conn.send_command("MONITOR")
        assert conn.read_response() in (b"OK", "OK")
        self.started.set()
        while not self.stopping.is_set():
            try:
                line = conn.read_response()
            except (redis.RedisError, OSError):
                break
            self._record(line.decode("utf-8", "backslashreplace")
                         if isinstance(line, bytes) else str(line))
        conn.disconnect()

    def _user_of(self, addr: str) -> str:
        if addr == "lua":
            return self.last_script_user
        if addr not in self.users or addr in self.authenticated:
            self.authenticated.discard(addr)  # its user changed: ask again
            with contextlib.suppress(redis.RedisError):
                self._refresh_clients()
        return self.users.get(addr, "?")

    def _keys(self, command: str, args: list[str]) -> list[str]:
        """The key arguments of one command, as Redis itself finds them (COMMAND GETKEYS)."""
        if command in self.keyless or command in _CHANNEL_COMMANDS:
            return []
        if self.raw is None:
            self.raw = self.client.connection_pool.make_connection()
        self.raw.send_command("COMMAND", "GETKEYS", command, *args)
        try:
            keys = self.raw.read_response()
        except redis.ResponseError:  # a command without key arguments
            self.keyless.add(command)
            return []
        return [k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in keys]

    def _record(self, line: str) -> None:
        head = re.match(r"^[\d.]+ \[\d+ ([^\]]+)\] ", line)
        if not head:
            return
        parts = [_unescape(a) for a in _ARG.findall(line[head.end():])]
        if not parts:
            return
        addr = head.group(1)
        command, args = parts[0].lower(), parts[1:]
        user = self._user_of(addr)
        if command in ("eval", "evalsha"):
            self.last_script_user = user
        if user == "?":
            self.unknown.append(line)
        if command == "auth":  # always allowed; the next command shows the new user
            self.authenticated.add(addr)
            return
        if user == acl.ADMIN and command == "command":
            return  # our own key lookups
        use = self.usage[user]
        use.count += 1
        name = f"{command}|{args[0].lower()}" if command in _SUBCOMMANDS and args else command
        use.commands.add(name)
        if command == "publish" and args:
            names = {shape(args[0])}
            use.channels.update(names)
        elif command in ("psubscribe", "punsubscribe"):  # patterns must be allowed literally
            names = set(args)
            use.channels.update(names)
        elif command in _CHANNEL_COMMANDS:
            names = {shape(a) for a in args}
            use.channels.update(names)
        else:
            names = {shape(k) for k in self._keys(command, args)}
            use.keys.update(names)
        use.by_command[name].update(names)


def lacking(role: acl.Role, use: Usage) -> dict[str, set[str]]:
    """What ``use`` needed that ``role``'s rules do not grant (empty sets: nothing), judged as
    Redis 7 judges its selectors: a command on a key needs one grant naming both (so this
    checks the deployments' rules, not just the 6.2 union); ``PSUBSCRIBE`` patterns must be
    allowed literally, other channels match the patterns."""
    def grants(command: str) -> list[acl.Grant]:
        return [g for g in role.grants if {command, command.split("|")[0], "@all"}
                & set(g.commands)]

    def matches(name: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    missing: dict[str, set[str]] = {"commands": {c for c in use.commands if not grants(c)},
                                    "keys": set(), "channels": set()}
    for command, names in use.by_command.items():
        if command in ("psubscribe", "punsubscribe"):
            missing["channels"] |= {n for n in names
                                    if n not in role.channels and "*" not in role.channels}
        elif command in _CHANNEL_COMMANDS:
            missing["channels"] |= {n for n in names if not matches(n, role.channels)}
        else:
            missing["keys"] |= {f"{command} {n!r}" for n in names
                                if not any(matches(n, g.keys) for g in grants(command))}
    return missing


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _cli(*args: str, env: Mapping[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    return subprocess.run([sys.executable, "-m", "crypto_ml.manager", *args], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=timeout)


def full_run(cluster: LocalCluster, data_dir: Path, work: Path) -> dict[str, object]:
    """Every role at work on ``cluster`` (started with Flower): what each command returned."""
    manager = {"CRYPTO_ML_BROKER_URL": cluster.url_for("manager"),
               "CRYPTO_ML_DATA_DIR": str(data_dir)}
    done: dict[str, object] = {}
    coins = "bitcoin,ethereum,litecoin,ripple,monero"
    done["send-tasks batched"] = _cli("send-tasks", "--coins", coins, "--model", "linear,naive",
                                      "--horizon", "3", env=manager)
    done["send-tasks single"] = _cli("send-tasks", "--coins", "bitcoin", "--horizon", "3",
                                     env=manager)
    done["send-tasks timeout"] = _cli("send-tasks", "--model", "linear", "--timeout", "0.01",
                                      env=manager)  # every coin: times out, revokes, cleans up
    table = work / "table.csv"  # a table run: chunks whose values travel beside the message
    table.write_text("unique_id,ds,y\n" + "".join(f"s{s},{d},{100 + s + d % 7}\n"
                                                  for s in range(3) for d in range(30)))
    done["send-tasks table"] = _cli("send-tasks", "--input", str(table), "--output",
                                    str(work / "table-out.parquet"), "--model", "naive,linear",
                                    "--horizon", "3", env=manager)
    done["backtest"] = _cli("backtest", "--model", "naive,linear", "--horizon", "2",
                            "--origins", "2", "--min-train", "4", "--out", str(work / "bt"),
                            env={**manager, "CRYPTO_ML_DATA_DIR": str(BACKTEST_DATA)})
    assert cluster.flower_url
    done["flower"] = [_get(cluster.flower_url + path) for path in (
        "/api/workers?refresh=1", "/api/tasks", "/api/queues/length", "/", "/metrics",
        "/workers", "/tasks", "/broker")]
    port = free_port()
    exporter_env = {**os.environ, "CRYPTO_ML_BROKER_URL": cluster.url_for("exporter")}
    exporter = spawn([sys.executable, "-m", "crypto_ml", "queue-depth", "--port", str(port),
                      "--host", "127.0.0.1"], work / "exporter.log", env=exporter_env, cwd=ROOT)
    try:
        wait_until(lambda: _healthy(f"http://127.0.0.1:{port}"), 60,
                   "the queue-depth exporter answering")
        done["exporter"] = _get(f"http://127.0.0.1:{port}/")
    finally:
        terminate(exporter)
    done.update(api_run(cluster, data_dir, work))
    with redis.Redis.from_url(cluster.url_for("exporter")) as keda:  # KEDA's redis trigger
        done["keda"] = keda.llen("cpu")
    # the worker containers' health check, with the worker's credentials
    (work / "crypto-ml-worker.json").write_text(json.dumps({"nodes": cluster.worker_names}))
    done["worker health"] = subprocess.run(
        [sys.executable, "workers/worker.py", "ping", "--timeout", "5"], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CRYPTO_ML_BROKER_URL": cluster.url_for("worker"), "TMPDIR": str(work)})
    return done


def _healthy(url: str) -> bool:
    """Whether the server at ``url`` answers 200 at /healthz (not yet listening: False)."""
    try:
        return _get(f"{url}/healthz") == 200
    except OSError:
        return False


def _call(url: str, body: object = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            raw = reply.read()
            status = int(reply.status)
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {}


def api_run(cluster: LocalCluster, data_dir: Path, work: Path) -> dict[str, object]:
    """The HTTP API as the manager's user: a forecast waited for, one saved and polled
    (``crypto_ml:run:*``), its health (a ping of the workers) and metrics (queue depth)."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")},
           "CRYPTO_ML_BROKER_URL": cluster.url_for("manager"), "CRYPTO_ML_DATA_DIR": str(data_dir)}
    api = spawn([sys.executable, "-m", "crypto_ml.api", "--port", str(port)], work / "api.log",
                env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    done: dict[str, object] = {}
    try:
        wait_until(lambda: _healthy(url), 120, "the API answering",
                   lambda: None if api.poll() is None else (work / "api.log").read_text()[-2000:])
        body = {"coins": ["bitcoin"], "model": "linear", "horizon": 2}
        done["api wait"] = _call(f"{url}/v1/forecasts?wait=60", body)[0]
        status, accepted = _call(f"{url}/v1/forecasts", {**body, "coins": ["ethereum"]})
        states: list[object] = []
        if status == 202:
            def finished() -> bool:
                states.append(_call(f"{url}{accepted['status_url']}")[1].get("status"))
                return states[-1] in ("done", "failed")

            wait_until(finished, 60, "the saved API run finishing")
        done["api saved"] = (status, states[-1] if states else None)
        done["api health"] = _get(f"{url}/healthz")
        done["api metrics"] = _get(f"{url}/metrics")
    finally:
        terminate(api)
    return done


@contextlib.contextmanager
def watched_cluster(roles: Mapping[str, acl.Role], work: Path, workers: int = 2,
                    redis_server: str | None = None) -> Iterator[tuple[LocalCluster, Recorder]]:
    """A local cluster with Flower and ``roles`` as its users, recorded from before it starts
    (on ``redis_server``, else the embedded 6.2)."""
    flower = Settings(flower_port=free_port())
    cluster = LocalCluster(workers=workers, flower=flower, roles=roles, redis_server=redis_server)
    cluster.start_redis()
    try:
        with cluster.client() as admin, Recorder(admin) as recorder:
            admin.execute_command("ACL", "LOG", "RESET")
            cluster.start_workers()
            cluster.start_flower()

            cluster.wait_for_workers()
            if cluster.flower:
                cluster.flower.wait_ready(cluster.worker_names)
            yield cluster, recorder
            if cluster.flower:  # stopping, recorded too: workers give back what they hold
                cluster.flower.stop()
            for proc in cluster.workers:
                terminate(proc)
    finally:
        cluster.stop()


def acl_log(client: redis.Redis) -> list[dict[str, object]]:
    """Refusals since the last reset: user, command or key or channel, reason."""
    entries = client.execute_command("ACL", "LOG")
    out = []
    for entry in entries:
        pairs = dict(zip(entry[::2], entry[1::2], strict=False)) if isinstance(entry, list) \
            else dict(entry)
        out.append({(k.decode() if isinstance(k, bytes) else k):
                    (v.decode() if isinstance(v, bytes) else v) for k, v in pairs.items()})
    return out


def report(usage: Mapping[str, Usage], roles: Mapping[str, acl.Role]) -> str:
    lines = []
    for user in sorted(usage):
        use = usage[user]
        lines.append(f"== {user}: {use.count} commands")
        lines.append("  commands: " + " ".join(sorted(use.commands)))
        lines.append("  keys:     " + " ".join(sorted(repr(k)[1:-1] for k in use.keys)))
        lines.append("  channels: " + " ".join(sorted(use.channels)))
        for command, names in sorted(use.by_command.items()):
            lines.append(f"    {command}: " + " ".join(sorted(repr(n)[1:-1] for n in names)))
        role = acl.ROLES.get(user)
        if role is not None and user != acl.ADMIN:
            missing = {k: v for k, v in lacking(role, use).items() if v}
            lines.append(f"  not in crypto_ml/core/acl.py: {missing or 'nothing'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strict", action="store_true",
                        help="run under the shipped rules instead of permissive users")
    parser.add_argument("--data-dir", type=Path,
                        default=ROOT.parent / "shared" / "data" / "top100-2017",
                        help="price CSVs (default: the real set beside the clone)")
    parser.add_argument("--redis-server", help="another redis-server binary (e.g. a 7.x)")
    args = parser.parse_args()
    roles = acl.ROLES if args.strict else acl.permissive()
    with tempfile.TemporaryDirectory() as tmp:
        with watched_cluster(roles, Path(tmp), redis_server=args.redis_server) as (
                cluster, recorder):
            done = full_run(cluster, args.data_dir, Path(tmp))
            with cluster.client() as admin:
                refusals = acl_log(admin)
        for what, result in done.items():
            code = getattr(result, "returncode", result)
            print(f"{what}: {code}")
        print(report(recorder.usage, roles))
        print(f"unattributed lines: {len(recorder.unknown)}", *recorder.unknown[:5], sep="\n  ")
        print(f"ACL LOG: {len(refusals)} refusal(s)", *refusals[:20], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
