"""Reading ahead: a thread takes the next items of an iterator while the caller works on
this one. For pyarrow's readers, which decode without the GIL, that overlaps decoding the
next batches of a table with checking or cutting the current one."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
Handed = tuple[T | None, BaseException | None]


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items`` (never None), read by a thread up to ``depth`` ahead; what reading raises is
    raised here, in order. When the caller stops early, the thread ends at its next item."""
    box: queue.Queue[Handed[T]] = queue.Queue(depth)
    stop = threading.Event()

    def offer(item: Handed[T]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                box.put(item, timeout=0.1)
                return True
        return False  # nobody reads any more

    def read() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((None, None))
        except BaseException as exc:  # handed to the caller, who raises it
            offer((None, exc))

    threading.Thread(target=read, name="crypto-ml-read-ahead", daemon=True).start()
    try:
        while True:
            item, error = box.get()
            if error is not None:
                raise error
            if item is None:
                return
            yield item
    finally:
        stop.set()
