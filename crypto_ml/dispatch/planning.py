"""How forecasts become task messages: deep ones alone, longest first; cheap ones batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crypto_ml.models import HEAVY
from crypto_ml.worker.requests import BATCH_TASK_NAME, TASK_NAME, ForecastRequest

MIN_MESSAGES = 4  # cheap forecasts are spread over at least this many messages


@dataclass(frozen=True)
class Message:
    """One task message and the (coin, model) forecasts it carries."""

    task: str
    kwargs: dict[str, Any]
    items: list[tuple[str, str]]
    #: The wire format when the message needs one (a table chunk's bytes: msgpack).
    serializer: str | None = None
    #: What the sender knows the message by (a table run's chunk number).
    key: int | None = None
    #: The message's bulk (a table chunk's values), stored in Redis beside the message
    #: (:func:`~crypto_ml.worker.chunks.payload_key`), not in it.
    payload: bytes | None = None


def plan_messages(requests: Sequence[ForecastRequest], batch_size: int,
                  min_messages: int = MIN_MESSAGES) -> list[Message]:
    """Deep forecasts one per message, longest series first (they bound the run's length);
    cheap ones in batches of up to ``batch_size``, but at least ``min_messages`` (4) messages
    where there are that many forecasts, so a cluster of many workers still shares them out."""
    heavy = sorted((r for r in requests if r.model in HEAVY), key=lambda r: -len(r.prices))
    cheap = [r for r in requests if r.model not in HEAVY]
    size = max(1, min(batch_size, len(cheap) // min_messages))
    if size == 1:
        return [Message(TASK_NAME, r.as_kwargs(), [(r.coin, r.model)]) for r in heavy + cheap]
    messages = [Message(TASK_NAME, r.as_kwargs(), [(r.coin, r.model)]) for r in heavy]
    for i in range(0, len(cheap), size):
        chunk = cheap[i : i + size]
        messages.append(Message(BATCH_TASK_NAME, {"items": [r.as_kwargs() for r in chunk]},
                                [(r.coin, r.model) for r in chunk]))
    return messages
