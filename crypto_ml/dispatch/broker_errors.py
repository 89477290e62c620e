"""What publishing a task message meets when the broker is away, or answers no."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from kombu.exceptions import OperationalError

from crypto_ml.core.errors import BrokerUnavailable

#: What publishing raises while the broker is away (after kombu's own retries), or when it
#: answers no; redis-py's own errors come from storing a message's bulk beside it.
PUBLISH_ERRORS = (OperationalError, ConnectionError, OSError, redis.RedisError)


def transient(exc: BaseException) -> bool:
    """A broker that is away (connection lost, time-out), not one that refused the command
    (``OOM command not allowed``, ``NOPERM``): kombu raises OperationalError for both."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.ResponseError):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


def refused(exc: BaseException) -> BrokerUnavailable:
    """The one line for a broker that answered no to a task message."""
    text = str(exc)
    if "maxmemory" in text:
        return BrokerUnavailable(
            f"Redis is full and refused a task message ({text.rstrip('.')}): free memory or "
            "raise its maxmemory (docs/deployment.md#memory), then run the same command again; "
            "nothing more was sent")
    return BrokerUnavailable(f"the broker refused a task message ({text}); see the Redis "
                             "user's ACL rules (docs/least-privilege.md)")


#: How often a run that waits for a Redis that went away says that it still does.
REMIND_SECONDS = 30.0


class Away:
    """Says that ``what`` (the broker, the result backend) went away once, then every
    ``remind`` seconds while it stays away, and once when it is back: not a line for every
    retry, which a failover of seconds or a stopped Redis turned into one line a second."""

    def __init__(self, say: Callable[[str], None], what: str, then: str,
                 remind: float = REMIND_SECONDS) -> None:
        self.say, self.what, self.then, self.remind = say, what, then, remind
        self.since: float | None = None
        self._told = 0.0

    def lost(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since, self._told = now, now
            self.say(f"lost {self.what} ({type(exc).__name__}); waiting for it to come back")
        elif now - self._told >= self.remind:
            self._told = now
            self.say(f"still waiting for {self.what}: away {now - self.since:.0f} s "
                     f"({type(exc).__name__}); {self.then}")

    def back(self) -> None:
        if self.since is not None:
            self.say(f"{self.what} is back after {time.monotonic() - self.since:.0f} s")
            self.since = None
