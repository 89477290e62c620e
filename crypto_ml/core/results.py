"""What a task's stored result says, read as JSON or msgpack, whichever its worker wrote.

A result in the Redis backend carries no content type: Celery reads it with the reader's own
``result_serializer``, so a manager set to ``json`` failed with a ``DecodeError`` traceback on
the results of workers set to ``msgpack`` (or the other way round). :func:`result_meta` tells
the two by the first byte, and reads anything else (bytes no worker of ours wrote) as a
failure of that task, never as an exception of the reader.
"""

from __future__ import annotations

from typing import Any

import celery.backends.base
from celery import states
from celery.exceptions import SecurityError
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import loads

#: The wire formats a worker may store results in (``CRYPTO_ML_SERIALIZER``), by whether the
#: stored bytes open a JSON object.
_STORED_AS = {True: ("application/json", "utf-8"), False: ("application/x-msgpack", "binary")}
#: Celery 5.7 compresses a result where ``result_compression`` is set; older ones never do.
_decompress = getattr(celery.backends.base, "decompress_payload", lambda payload: payload)
_UNREADABLE = (DecodeError, ContentDisallowed, SecurityError, TypeError, ValueError, KeyError)


def result_meta(app: Any, payload: bytes | str) -> dict[str, Any]:
    """The meta of a stored result (``app``: the Celery app whose backend stored it)."""
    raw = payload.encode() if isinstance(payload, str) else payload
    try:
        raw = _decompress(raw)
        content_type, encoding = _STORED_AS[raw[:1] == b"{"]
        decoded = loads(raw, content_type, encoding, accept={content_type})
        if not isinstance(decoded, dict) or "status" not in decoded:
            raise DecodeError("no task status in it")
        meta: dict[str, Any] = app.backend.meta_from_decoded(decoded)
        return meta
    except _UNREADABLE as exc:
        return {"status": states.FAILURE, "result": f"its stored result is unreadable ({exc}): "
                "not a crypto-ml worker's JSON or msgpack; check what else writes to this "
                "result backend"}
