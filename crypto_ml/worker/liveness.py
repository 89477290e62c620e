"""Worker liveness: heartbeats in Redis and a sweeper that redelivers a dead worker's tasks.

Tasks are acknowledged late, so kombu keeps every message a worker has taken in
its ``unacked`` hash (field: delivery tag) with the delivery time in the
``unacked_index`` sorted set. kombu alone gives such a message back only after
the visibility timeout, which must outlast the longest task. Here every worker
process (the parent, not the pool) runs one thread that, every
``heartbeat_seconds``:

1. **beats**, in one MULTI/EXEC: ``SET crypto_ml:worker:<id>:alive`` with a TTL of
   ``dead_after`` seconds, ``SADD crypto_ml:workers <id>``, and rewrites
   ``crypto_ml:worker:<id>:held`` (hash: delivery tag -> time) with the tags of the
   tasks it holds (reserved or running), while ``ZADD XX`` moves those tags' scores
   in ``unacked_index`` to the same time. A live worker's messages therefore never
   look older than one beat, and the visibility timeout never redelivers them. When
   its ``alive`` key no longer holds what its last beat wrote, within ``dead_after`` of that
   beat, Redis lost writes (restart, failover): it records the messages it holds in ``unacked`` again
   (:meth:`Liveness.record_again`). Then it says how many tasks it runs at once (its pool's
   processes), when, and from which queues, in the hash ``crypto_ml:slots``: the manager
   sizes a table run's messages in flight by the sum over the workers that beat
   (:mod:`crypto_ml.dispatch.capacity`). A received message also wakes the beat, so that it
   is recorded within :data:`BEAT_GAP` of its delivery, not a whole ``heartbeat_seconds``
   later (a burst of deliveries shares one beat).
2. **sweeps**: every registered worker whose ``alive`` key has expired is dead. For
   each tag in its ``held`` hash whose ``unacked_index`` score still equals the time
   the dead worker wrote, the message is moved back to its queue (front) in a WATCH
   transaction, as kombu's own restore does. A tag taken since by another worker has
   a new score and is left alone, so two sweepers, or a sweeper and a worker that
   just received the message again, never deliver it twice. Then the dead worker's
   keys are deleted.

A sweeper trusts a missing heartbeat only after its own beats have succeeded for
``2 * heartbeat_seconds + 1`` (after start and after any broker outage): every live
worker retries its beat each ``heartbeat_seconds``, so after a Redis restart or
failover, during which nobody can beat and keys may expire, the live ones have beaten
again before anyone is judged. docs/operations.md (Dead workers) discusses timing and trade-offs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from crypto_ml.core import keys
from crypto_ml.worker.acks import restore_if_held

log = logging.getLogger(__name__)

#: The least time between two beats woken by deliveries (seconds): a message received in it
#: is recorded at most this much later than it was taken
BEAT_GAP = 0.2
#: what a record this module cannot read raises (not JSON, not [message, exchange, routing
#: key], a score that is not a time, a key of another type): that record is skipped, the sweep
#: goes on; connection errors still end the sweep (the broker is down: the next one retries)
UNREADABLE = (ValueError, TypeError, KeyError, redis.ResponseError)


def alive_key(worker_id: str) -> str:
    """String key with a TTL: present while the worker beats."""
    return f"{keys.WORKER}{worker_id}:alive"


def held_key(worker_id: str) -> str:
    """Hash: delivery tag -> the ``unacked_index`` score the worker last gave it."""
    return f"{keys.WORKER}{worker_id}:held"


def reserved_messages() -> dict[str, Any]:
    """The messages of the requests this worker process holds (reserved or running), by
    delivery tag."""
    from celery.worker import state

    for _ in range(10):  # the consumer thread may add a request while we copy
        try:
            requests = list(state.reserved_requests)
            break
        except RuntimeError:
            continue
    else:
        raise RuntimeError("reserved requests kept changing")
    messages: list[Any] = [getattr(r, "message", None) for r in requests]
    return {str(m.delivery_tag): m for m in messages if getattr(m, "delivery_tag", None)}


class Liveness(threading.Thread):
    """The heartbeat and sweeper thread of one worker process."""

    def __init__(self, app: Any, worker_id: str, heartbeat_seconds: float, dead_after: float,
                 held_ttl: int,
                 holdings: Callable[[], Mapping[str, Any]] = reserved_messages,
                 slots: Callable[[], int] = lambda: 1, queues: str = "") -> None:
        super().__init__(name="crypto-ml-liveness", daemon=True)
        self.app = app
        self.worker_id = worker_id
        self.interval = heartbeat_seconds
        self.dead_after = dead_after
        self.held_ttl = held_ttl
        self.orphan_after = 2 * dead_after
        self.holdings = holdings
        self.slots, self.queues = slots, queues
        self.stopping = threading.Event()
        self.woken = threading.Event()
        self.connection: Any = None
        self.healthy_since: float | None = None
        self.last_beat: float | None = None  # monotonic time of the last beat that succeeded
        self.last_written = ""  # the value that beat gave our alive key
        self.beats = 0
        self.redelivered = 0
        self.unreadable: set[str] = set()  # records already said to be unreadable (once each)

    # -- connection -------------------------------------------------------------------------
    def channel(self) -> Any:
        if self.connection is None:
            self.connection = self.app.connection_for_write()
        return self.connection.default_channel

    def _drop_connection(self) -> None:
        conn, self.connection = self.connection, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.release()

    # -- thread -----------------------------------------------------------------------------
    def wake(self) -> None:
        """Record holdings soon (a message was just received), not at the next beat: at once
        after a quiet spell, else :data:`BEAT_GAP` after the last beat."""
        self.woken.set()

    def run(self) -> None:
        next_sweep = 0.0
        while not self.stopping.is_set():
            try:
                self.beat()
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.interval
            except Exception as exc:  # broker down: keep trying, say it once
                if self.healthy_since is not None:
                    log.warning("worker heartbeat: broker unreachable (%s: %s); retrying",
                                type(exc).__name__, exc)
                self.healthy_since = None
                self._drop_connection()
            self.woken.wait(self.interval)
            self.woken.clear()
            self._gap()

    def _gap(self) -> None:
        """Woken by a delivery soon after a beat: wait until :data:`BEAT_GAP` after it, so
        that one beat records a burst of deliveries (under load a worker receives a message
        every few ms; a beat each cost its parent process more than the message itself)."""
        if self.last_beat is not None:
            self.stopping.wait(max(0.0, min(BEAT_GAP, self.interval)
                                   - (time.monotonic() - self.last_beat)))

    def stop(self, deregister: bool = True) -> None:
        """Stop beating; with ``deregister`` delete this worker's keys (clean shutdown)."""
        self.stopping.set()
        self.woken.set()
        self.join(self.interval + 5)
        if deregister:
            try:
                with self.channel().conn_or_acquire() as client, client.pipeline() as pipe:
                    pipe.delete(held_key(self.worker_id))
                    pipe.delete(alive_key(self.worker_id))
                    pipe.srem(keys.WORKERS, self.worker_id)
                    pipe.execute()
            except Exception as exc:  # the keys then expire by themselves
                log.warning("worker heartbeat: could not deregister (%s)", exc)
            self._forget_slots(self.worker_id)
        self._drop_connection()

    # -- beat -------------------------------------------------------------------------------
    def beat(self) -> None:
        """Say we are alive and record (and refresh) the deliveries we hold, atomically."""
        channel = self.channel()
        held = self.holdings()
        tags = sorted(held)
        now = time.time()
        with channel.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
            pipe.get(alive_key(self.worker_id))
            pipe.set(alive_key(self.worker_id), repr(now), ex=max(1, round(self.dead_after)))
            pipe.sadd(keys.WORKERS, self.worker_id)
            pipe.delete(held_key(self.worker_id))
            if tags:
                pipe.zadd(channel.unacked_index_key, dict.fromkeys(tags, now), xx=True)
                pipe.hset(held_key(self.worker_id), mapping=dict.fromkeys(tags, repr(now)))
                pipe.expire(held_key(self.worker_id), self.held_ttl)
            seen, _, added = pipe.execute()[:3]
        lost_writes = self._lost_our_last_beat(seen)
        self.last_beat, self.last_written = time.monotonic(), repr(now)  # one try each loss
        self.beats += 1
        self._say_slots(now)
        if self.healthy_since is None:
            self.healthy_since = time.monotonic()
        if lost_writes:
            log.warning("worker heartbeat: Redis lost this worker's last beat (a restart "
                        "without persistence, or a failover that dropped the newest writes)")
            if tags:
                self.record_again(held)
        elif added and self.beats > 1:
            log.warning("worker heartbeat: this worker %s was presumed dead (no heartbeat for "
                        "%g s); its tasks may have been delivered again", self.worker_id,
                        self.dead_after)

    def _say_slots(self, now: float) -> None:
        """Our pool's size, this beat's time and our queues in ``crypto_ml:slots``
        (:mod:`crypto_ml.dispatch.capacity`)."""
        self._best_effort("record this worker's slots", "hset", keys.SLOTS, self.worker_id,
                          f"{self.slots()} {now!r} {self.queues}")

    def _forget_slots(self, worker: str) -> None:
        self._best_effort("remove a worker's slots", "hdel", keys.SLOTS, worker)

    def _best_effort(self, what: str, command: str, *args: Any) -> None:
        """Apart from the beat and the sweep, so that a refusal (a Redis still on an older
        ACL, the key overwritten with another type) or a lost connection costs a table run's
        sizing only, never a heartbeat or a redelivery."""
        try:
            with self.channel().conn_or_acquire() as client:
                getattr(client, command)(*args)
        except (redis.RedisError, OSError) as exc:
            log.debug("worker heartbeat: could not %s (%s)", what, exc)

    def _lost_our_last_beat(self, seen: bytes | str | None) -> bool:
        """Whether Redis no longer holds what our last beat wrote, though it cannot have
        expired yet: a restart without persistence, a failover that dropped the newest writes."""
        return (self.last_beat is not None and time.monotonic() - self.last_beat < self.dead_after
                and (seen is None or bytes_to_str(seen) != self.last_written))

    def record_again(self, held: Mapping[str, Any]) -> list[str]:
        """Put the messages we hold back in kombu's unacked hash where Redis lost them (a
        restart without persistence, a failover that dropped the newest writes): to the
        manager they then look taken, not lost, so a running task is not sent again; and if
        this worker dies, the sweep gives them back. Returns the tags recorded again."""
        channel = self.channel()
        index, unacked = channel.unacked_index_key, channel.unacked_key
        with channel.conn_or_acquire() as client:
            with client.pipeline(transaction=False) as pipe:
                for tag in held:
                    pipe.hget(unacked, tag)
                missing = [t for t, raw in zip(held, pipe.execute(), strict=True) if raw is None]
            with client.pipeline(transaction=True) as pipe:
                for tag in missing:
                    info = held[tag].delivery_info
                    pipe.zadd(index, {tag: time.time()})
                    pipe.hset(unacked, tag, dumps([held[tag]._raw, info["exchange"],
                                                   info["routing_key"]]))
                pipe.execute()
            done = [t for t in missing if t not in self.holdings()]  # acked in the meantime
            for tag in done:
                client.pipeline().zrem(index, tag).hdel(unacked, tag).execute()
        again = [t for t in missing if t not in done]
        if again:
            log.warning("worker heartbeat: Redis lost the record of %d message(s) this worker "
                        "holds (a restart or failover); recorded them again: %s", len(again),
                        ", ".join(again))
        return again

    # -- sweep ------------------------------------------------------------------------------
    def trusts_silence(self) -> bool:
        """Whether our own beats have succeeded long enough to call a silent worker dead."""
        return (self.healthy_since is not None
                and time.monotonic() - self.healthy_since >= 2 * self.interval + 1)

    def sweep(self) -> int:
        """Redeliver the tasks of every dead worker; returns how many were redelivered."""
        if not self.trusts_silence():
            return 0
        with self.channel().conn_or_acquire() as client:
            others = sorted(bytes_to_str(m) for m in client.smembers(keys.WORKERS))
            others = [m for m in others if m != self.worker_id]
            with client.pipeline(transaction=False) as pipe:
                for worker in others:
                    pipe.exists(alive_key(worker))
                alive = pipe.execute() if others else []
            reaped = 0
            for worker in (w for w, up in zip(others, alive, strict=True) if not up):
                try:
                    reaped += self.reap(client, worker)
                except UNREADABLE as exc:  # its keys stay; the other dead workers are reaped
                    self._unreadable(f"the keys of dead worker {worker}", exc)
            return reaped + self.restore_orphans(client)

    def _give_back(self, client: Any, held: Any) -> list[str]:
        """Restore each ``(tag, score)`` of ``held`` that is still where it was delivered;
        a record that cannot be read is left where it is, said once, and skipped."""
        channel, restored = self.channel(), []
        for tag, score in held:
            try:
                if restore_if_held(channel, client, tag, score):
                    restored.append(bytes_to_str(tag))
            except UNREADABLE as exc:
                self._unreadable(f"task message {bytes_to_str(tag)} in "
                                 f"{channel.unacked_key!r}", exc)
        return restored

    def _unreadable(self, what: str, exc: Exception) -> None:
        if what not in self.unreadable:
            self.unreadable.add(what)
            log.error("worker heartbeat: could not give back %s (%s: %s); it is left in Redis "
                      "for an operator to inspect, and the sweep goes on", what,
                      type(exc).__name__, exc)

    def restore_orphans(self, client: Any) -> int:
        """Give back messages that no live worker has refreshed for ``orphan_after`` seconds
        (e.g. a task whose reject was lost with the broker connection)."""
        old = client.zrange(self.channel().unacked_index_key, "-inf",
                            time.time() - self.orphan_after, byscore=True, offset=0, num=100,
                            withscores=True)
        restored = self._give_back(client, ((tag, repr(score)) for tag, score in old))
        if restored:
            log.warning("redelivered %d task message(s) no live worker held for %g s: %s",
                        len(restored), self.orphan_after, ", ".join(restored))
        self.redelivered += len(restored)
        return len(restored)

    def reap(self, client: Any, worker: str) -> int:
        """Give back every message the dead ``worker`` still holds; delete its keys."""
        restored = self._give_back(client, client.hgetall(held_key(worker)).items())
        with client.pipeline() as pipe:
            pipe.delete(held_key(worker))
            pipe.srem(keys.WORKERS, worker)
            pipe.execute()
        self._forget_slots(worker)
        if restored:
            log.warning("worker %s stopped beating (> %g s): redelivered %d task message(s) "
                        "it held: %s", worker, self.dead_after, len(restored), ", ".join(restored))
        else:
            log.info("worker %s stopped beating (> %g s); it held nothing", worker,
                     self.dead_after)
        self.redelivered += len(restored)
        return len(restored)


# -- the worker's hooks (connected by crypto_ml.celery_app) ----------------------------------
_running: list[Liveness] = []


def worker_id(hostname: str) -> str:
    """Unique per process start, so a worker restarted under the same name is a new one."""
    return f"{hostname}/{os.getpid()}/{secrets.token_hex(3)}"


def hostname_of(worker: str | bytes) -> str:
    """The Celery hostname in a :func:`worker_id` (as the registry holds it)."""
    return bytes_to_str(worker).split("/", 1)[0]


def start(app: Any, hostname: str, slots: Callable[[], int] = lambda: 1,
          queues: str = "") -> Liveness | None:
    """Start this worker process's heartbeat thread (once), configured from ``app.conf``;
    ``slots`` says how many tasks the worker runs at once (its pool's processes), ``queues``
    which queues it takes them from (comma-separated)."""
    if _running:
        return _running[0]
    conf = app.conf
    interval = float(conf.get("crypto_ml_heartbeat_seconds") or 0)
    if interval <= 0:
        return None
    thread = Liveness(app, worker_id(hostname), interval,
                      float(conf.get("crypto_ml_dead_after_seconds") or 5 * interval),
                      held_ttl=int(conf.get("broker_transport_options", {})
                                   .get("visibility_timeout", 3600)) + 60, slots=slots,
                      queues=queues)
    _running.append(thread)
    thread.start()
    log.info("worker heartbeat: %s beats every %g s; declared dead after %g s of silence",
             thread.worker_id, thread.interval, thread.dead_after)
    return thread


def wake() -> None:
    for thread in _running:
        thread.wake()


def stop() -> None:
    while _running:
        _running.pop().stop()
