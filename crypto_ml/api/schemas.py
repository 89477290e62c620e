"""Request and response bodies of the HTTP API (pydantic): what ``/docs`` shows.

Checks that need no data (types, a horizon of at least 1, exactly one of
``coins`` and ``series``) are declared here; checks against the data and the
settings (unknown coin, horizon cap, NaN, series too short) are made by
:mod:`crypto_ml.api.service` and answered in the same 422 shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from crypto_ml.core.errors import InvalidTaskInput
from crypto_ml.models import DEFAULT_HORIZON, DEFAULT_MODEL
from crypto_ml.models.intervals import DEFAULT_LEVELS, check_levels

from .job_files import JOB_ID

SOURCES = ("coins", "series")


def _whole(value: Any) -> Any:
    """JSON has one number type: 10.0 is the integer 10 (as JSON Schema counts it)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: The largest ``max_points`` a body may give (a window is an int32 on the wire).
MAX_POINTS = 2**31 - 1
#: Series one request may send: more is a table job's work (POST /v1/jobs), which streams its
#: output to a file instead of one answer held in memory
MAX_SERIES = 1_000

#: An integer field that also takes a JSON number with no fraction.
Whole = Annotated[int, BeforeValidator(_whole)]


def _unicode(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("holds a lone surrogate escape (such as \\ud800), which is not "
                         "Unicode: send UTF-8 text") from None
    return text


#: Text that is Unicode: JSON can escape a lone surrogate (``"\\ud800"``), which no UTF-8 text
#: holds, so it could be neither queued nor echoed (422 here, not a 500 or 503 later).
Text = Annotated[str, AfterValidator(_unicode)]


def _checked_levels(value: list[float]) -> list[float]:
    """Sorted and unique, as every other entry point takes them (``check_levels``)."""
    try:
        return list(check_levels(value))
    except InvalidTaskInput as exc:
        raise ValueError(str(exc)) from None


#: Prediction interval levels in percent, each strictly between 0 and 100.
Levels = Annotated[list[Annotated[float, Field(gt=0, lt=100, allow_inf_nan=False)]],
                   AfterValidator(_checked_levels)]


class Body(BaseModel):
    """A request body: strict fields, no unknown ones, and one error at once when it holds
    more fields than the model has (checking 150,000 unknown fields one by one held the
    server's event loop for seconds)."""

    # strict: a field takes what its schema says, not "10" for 10 nor 0 for false
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _few_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) > len(cls.model_fields):
            unknown = [str(k)[:40] for k in data if k not in cls.model_fields][:3]
            raise ValueError(f"the body has {len(data):,} fields; this one takes at most "
                             f"{len(cls.model_fields)} (unknown: "
                             f"{', '.join(map(repr, unknown))}...)")
        return data


def _one_source_schema(schema: dict[str, Any]) -> None:
    """The schema says what :meth:`ForecastBody.one_source` checks: exactly one of
    ``coins`` and ``series``, each a list or a map (never null) when present."""
    for name in SOURCES:
        prop = schema["properties"][name]
        kinds = [k for k in prop.pop("anyOf") if k.get("type") != "null"]
        prop.update(kinds[0])
        prop.pop("default", None)
    schema["oneOf"] = [{"required": [name]} for name in SOURCES]
    schema["properties"]["series"]["propertyNames"] = {"pattern": r"\S"}  # a name, not blanks
    schema["examples"] = [
        {"coins": ["bitcoin", "ethereum"], "model": "linear", "horizon": 10},
        {"series": {"my-series": [1.0, 1.1, 1.3, 1.2, 1.4]}, "model": "naive", "horizon": 3},
    ]


class ForecastBody(Body):
    """Forecast ``coins`` of the data directory, or the caller's own ``series``
    (exactly one of the two)."""

    model_config = ConfigDict(json_schema_extra=_one_source_schema)

    coins: list[Annotated[str, Field(pattern=r"\S"), AfterValidator(_unicode)]] | None = Field(
        None, min_length=1, description="coin ids (GET /v1/coins) or names, in any case and "
        "spacing; each forecast once, under its id")
    series: dict[Text, list[float]] | None = Field(
        None, min_length=1, max_length=MAX_SERIES,
        description=f"name -> closes, oldest first; finite numbers only; at most {MAX_SERIES:,} "
                    "series (more: POST /v1/jobs)")
    model: Text | list[Text] = Field(DEFAULT_MODEL, description="a model name (GET /v1/models), a "
                                   "comma list or a list of names")
    horizon: Whole = Field(DEFAULT_HORIZON, ge=1,
                           description="days to forecast (at most CRYPTO_ML_MAX_HORIZON)")
    params: dict[str, Any] = Field(default_factory=dict, description="model options, e.g. "
                                   '{"epochs": 2}; each model takes those GET /v1/models lists')
    max_points: Whole | None = Field(None, ge=0, le=MAX_POINTS,
                                     description="fit on the newest N closes only "
                                   "(0: all; default: each model's own window, 200 for most)")
    levels: Levels = Field(
        list(DEFAULT_LEVELS), description="prediction interval levels in percent, e.g. "
        "[80, 95]; [] for none")
    retrain: bool = Field(False, description="deep models: train even if the model store "
                          "holds a fit on this data")

    @model_validator(mode="before")
    @classmethod
    def no_null_source(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in SOURCES:
                if name in data and data[name] is None:
                    raise ValueError(f"'{name}' may be left out but not null")
        return data

    @model_validator(mode="after")
    def one_source(self) -> ForecastBody:
        if (self.coins is None) == (self.series is None):
            raise ValueError("send exactly one of 'coins' (ids from GET /v1/coins) and "
                             "'series' ({name: [closes, oldest first]})")
        return self


class Problem(BaseModel):
    """An error: what is wrong and what to do."""

    detail: str


class FieldProblem(BaseModel):
    """One problem of a request: where (``loc``), what (``msg``), of which kind (``type``)."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class Unprocessable(BaseModel):
    """A request with problems, each named by field (at most 20 listed)."""

    detail: list[FieldProblem]


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


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobBody(Body):
    """A long-format table (``unique_id, ds, y``) to forecast, as ``send-tasks --input``."""

    input: Text = Field(min_length=1, description="a Parquet file, a folder of them or a CSV: "
                       "a path relative to the server's data directory (CRYPTO_ML_DATA_DIR), "
                       "or s3://BUCKET/KEY (an object, or a prefix holding a dataset) read "
                       "with the server's S3 credentials")
    model: Text | list[Text] = Field(DEFAULT_MODEL,
                                     description="a model name, a comma list or a list")
    horizon: Whole = Field(DEFAULT_HORIZON, ge=1, description="steps to forecast per series")
    levels: Levels = Field(list(DEFAULT_LEVELS),
                           description="prediction interval levels in percent")
    max_points: Whole | None = Field(None, ge=0, le=MAX_POINTS,
                                     description="fit on the newest N values (0: all; default: "
                                     "each model's own window, 200 for most)")
    id_col: Text = Field("unique_id", min_length=1)
    time_col: Text = Field("ds", min_length=1)
    value_col: Text = Field("y", min_length=1)
    fallback_model: Text | None = Field(None, description="a cheap model that forecasts the "
                                        "series a model fails on, in that model's columns "
                                        "(listed in the failures table as filled)")
    resume: str | None = Field(None, pattern=JOB_ID,
                               description="the id of a failed job of this same body: the new "
                               "job takes its finished chunks and computes only the rest")

    @model_validator(mode="after")
    def _three_columns(self) -> JobBody:
        if len({self.id_col, self.time_col, self.value_col}) < 3:
            raise ValueError("id_col, time_col and value_col must name three different columns")
        return self


class JobStatus(BaseModel):
    """Where a job stands; ``output`` is complete once ``status`` is ``done``."""

    id: str
    status: JobState
    series: int = Field(description="series in the input")
    done: int = Field(description="series finished (forecast or failed)")
    failed: int = Field(description="series with a failed forecast (listed in the failures "
                        "table, and not filled by the fallback model) or in a chunk that did "
                        "not come back; once the job failed, also every series it will not "
                        "finish")
    series_per_second: float
    eta_seconds: float | None
    output: str
    failures_output: str
    error: str | None = Field(None, description="why it failed, and how to resume it")
    resumed_from: str | None = Field(None, description="the failed job whose finished "
                                     "chunks this one took")
    resumed: int = Field(0, description="series of those chunks (counted in done, not "
                         "computed again)")
    resumed_by: str | None = Field(None, description="the job that took this failed job's "
                                   "finished chunks")
    cancel_requested: bool = Field(False, description="a DELETE asked this queued or running "
                                   "job to stop; it ends as cancelled within seconds")


class JobAccepted(BaseModel):
    id: str
    status_url: str
