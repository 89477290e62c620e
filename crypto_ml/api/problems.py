"""422 bodies that are always valid JSON and bounded in size, whatever the request held.

FastAPI's own handler echoes each field's ``input``; NaN, Infinity or undecodable bytes
there made the error body itself fail to render (a 500), and 180,000 bad coin names made
a 25 MB body. Here every problem keeps FastAPI's shape (``loc``, ``msg``, ``type``,
``input``, ``ctx``), with ``input`` and ``ctx`` made JSON-safe and short, and at most
:data:`MAX_PROBLEMS` listed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

#: Problems listed in one answer; the rest are counted in a last entry.
MAX_PROBLEMS = 20
MAX_INPUT_CHARS = 200


def json_safe(value: Any) -> Any:
    """``value`` as short, strict JSON: non-finite numbers and bytes become text, and
    anything longer than MAX_INPUT_CHARS once encoded becomes its truncated text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode()  # a lone surrogate (JSON's "\ud800") is no UTF-8
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        text = None
    if text is not None and len(text) <= MAX_INPUT_CHARS:
        return value
    shown = utf8(text if text is not None else repr(value))
    return shown[:MAX_INPUT_CHARS] + ("..." if len(shown) > MAX_INPUT_CHARS else "")


def utf8(text: str) -> str:
    """``text`` with any lone surrogate written out as its escape, so that it encodes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_PROBLEMS of ``errors``, each JSON-safe, plus one entry counting the rest."""
    shown = []
    for error in errors[:MAX_PROBLEMS]:
        loc = [p if isinstance(p, int) else utf8(str(p))[:MAX_INPUT_CHARS]
               for p in error.get("loc", ())]
        problem: dict[str, Any] = {"loc": loc, "msg": utf8(str(error.get("msg", "")))[:1000],
                                   "type": str(error.get("type", ""))}
        if "input" in error:
            problem["input"] = json_safe(error["input"])
        if error.get("ctx"):
            problem["ctx"] = {str(k): json_safe(v if isinstance(v, int | float | str) else str(v))
                              for k, v in error["ctx"].items()}
        shown.append(problem)
    rest = errors[MAX_PROBLEMS:]
    if len(rest) == 1 and rest[0].get("type") == "too_many_errors":  # the service stopped
        shown.append(dict(rest[0]))
    elif rest:
        shown.append(too_many(len(rest)))
    return shown


def too_many(left: int | None = None) -> dict[str, Any]:
    """The entry that stands for the problems not listed."""
    what = f"{left} more problems" if left is not None else "more problems may follow"
    return {"loc": ["body"], "type": "too_many_errors",
            "msg": f"{what}, not listed: fix these first"}
