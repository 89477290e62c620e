"""Request and response bodies of the HTTP API (pydantic): what ``/docs`` shows.

Checks that need no data (types, a horizon of at least 1, exactly one of
``coins`` and ``series``) are declared here; checks against the data and the
settings (unknown coin, horizon cap, NaN, series too short) are made by
:mod:`crypto_ml.api.service` and answered in the same 422 shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crypto_ml.core.errors import InvalidTaskInput
from crypto_ml.models.intervals import DEFAULT_LEVELS, check_levels


class ForecastBody(BaseModel):
    """Forecast ``coins`` of the data directory, or the caller's own ``series``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"coins": ["bitcoin", "ethereum"], "model": "linear", "horizon": 10},
        {"series": {"my-series": [1.0, 1.1, 1.3, 1.2, 1.4]}, "model": "naive", "horizon": 3},
    ]})

    coins: list[str] | None = Field(None, min_length=1, description="coin ids (GET /v1/coins)")
    series: dict[str, list[float]] | None = Field(
        None, min_length=1, description="name -> closes, oldest first; finite numbers only")
    model: str | list[str] = Field("linear", description="a model name (GET /v1/models), a "
                                   "comma list or a list of names")
    horizon: int = Field(10, ge=1, description="days to forecast (at most CRYPTO_ML_MAX_HORIZON)")
    params: dict[str, Any] = Field(default_factory=dict, description="model options, e.g. "
                                   '{"epochs": 2}; each model takes those GET /v1/models lists')
    max_points: int | None = Field(None, ge=0, description="fit on the newest N closes only "
                                   "(0: all; default: each model's own window, 200 for most)")
    levels: list[float] = Field(list(DEFAULT_LEVELS), description="prediction interval levels "
                                "in percent, e.g. [80, 95]; [] for none")
    retrain: bool = Field(False, description="deep models: train even if the model store "
                          "holds a fit on this data")

    @field_validator("levels")
    @classmethod
    def valid_levels(cls, value: list[float]) -> list[float]:
        try:
            return list(check_levels(value))
        except InvalidTaskInput as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def one_source(self) -> ForecastBody:
        if (self.coins is None) == (self.series is None):
            raise ValueError("send exactly one of 'coins' (ids from GET /v1/coins) and "
                             "'series' ({name: [closes, oldest first]})")
        return self


class Accepted(BaseModel):
    """Not finished within ``wait``: read the run at ``status_url``."""

    id: str
    status_url: str


class RunStatus(BaseModel):
    """A run: results ``{coin: {model: result}}`` and failures ``{coin: {model: reason}}``,
    as ``send-tasks --output`` writes them."""

    id: str
    status: Literal["queued", "running", "done", "failed"]
    results: dict[str, dict[str, dict[str, Any]]]
    failed: dict[str, dict[str, str]]


class ModelInfo(BaseModel):
    name: str
    queue: Literal["cpu", "gpu"]
    params: list[str]
    stored: bool = Field(description="fits are kept in the model store and reused")


class Models(BaseModel):
    models: list[ModelInfo]


class Coins(BaseModel):
    coins: list[str]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    broker: bool
    workers: list[str]
    detail: str | None = None
