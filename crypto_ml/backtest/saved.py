"""The shape of a saved ``backtest.json`` (what ``--model best --backtest FILE`` reads),
checked with pydantic so that a hand-edited or foreign file is refused naming the field
that is wrong (``per_coin.bitcoin: holds no model``), never with a Python error."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Scores(BaseModel):
    """One model's scores on one coin: MASE at least (null where it was not finite)."""

    model_config = ConfigDict(extra="allow", strict=True)

    mase: float | None


class _Saved(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    config: dict[str, Any]
    per_coin: dict[str, Annotated[dict[str, _Scores], Field(min_length=1)]]
    failed: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    windows: dict[str, list[str]] = {}


def saved_problem(data: object) -> str | None:
    """What is wrong with ``data`` as a saved backtest (the first problem, at its field), or
    None."""
    try:
        _Saved.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if first["type"] == "missing":
            return f"{'.'.join(loc[:-1]) or 'it'} has no {loc[-1]!r} field"
        message = {"too_short": "holds no model", "model_type": "should be an object {...}",
                   "dict_type": "should be an object {...}"}.get(first["type"], first["msg"])
        return f"{'.'.join(loc) or 'the file'}: {message}"
    return None
