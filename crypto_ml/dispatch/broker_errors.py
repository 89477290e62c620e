"""What publishing a task message meets when the broker is away, or answers no."""

from __future__ import annotations

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
