"""The shape of a saved ``backtest.json`` (what ``--model best --backtest FILE`` reads),
checked with pydantic so that a hand-edited or foreign file is refused naming the field
that is wrong (``per_coin.bitcoin: holds no model``), never with a Python error."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from crypto_ml.backtest.engine import printable
from crypto_ml.models import model_names


def _known(name: str) -> str:
    if name not in model_names():
        raise ValueError(f"{name[:40]!r} is no model of this version "
                         f"({', '.join(model_names())})")
    return name


Model = Annotated[str, AfterValidator(_known)]


class _Scores(BaseModel):
    """One model's scores on one coin: MASE at least (null where it was not finite)."""

    model_config = ConfigDict(extra="allow", strict=True)

    mase: Annotated[float, Field(ge=0)] | None  # a ratio of absolute errors


class _Config(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    models: list[Model] = Field(min_length=1)


class _Saved(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    config: _Config
    per_coin: dict[str, Annotated[dict[Model, _Scores], Field(min_length=1)]]
    failed: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    windows: dict[str, list[str]] = {}


#: pydantic's words where plainer ones say it better
_SAID = {"too_short": "holds no model", "model_type": "should be an object {...}",
         "dict_type": "should be an object {...}", "list_type": "should be a list [...]"}


def saved_problem(data: object) -> str | None:
    """What is wrong with ``data`` as a saved backtest (the first problem, at its field), or
    None."""
    try:
        _Saved.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [printable(str(part)) for part in first["loc"] if part != "[key]"]
        if first["type"] == "missing":
            return f"{'.'.join(loc[:-1]) or 'it'} has no {loc[-1]!r} field"
        message = _SAID.get(first["type"], first["msg"].removeprefix("Value error, "))
        return f"{'.'.join(loc) or 'the file'}: {message}"
    return None
