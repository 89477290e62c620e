"""``crypto_ml.forecast(df)``: a long-format DataFrame (or a table's path) in, forecasts out.

The Python face of table runs, shaped like statsforecast's ``forecast()``: a
statsforecast user switches with one line. The frame goes through the same path as
``send-tasks --input`` (:mod:`~crypto_ml.dispatch.table_run`), on the cluster the
settings name or on the embedded default, into a temporary Parquet file read back
as the result. Failed forecasts are listed in ``result.attrs["failures"]``
(``{"unique_id", "model", "error"}`` records, the id under ``id_col``'s name); with
``fallback_model``, those it forecast instead are listed too, their ``error`` beginning
``filled by fallback <name>:``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crypto_ml.core.errors import ConfigError, CryptoMLError, InvalidTable
from crypto_ml.core.settings import Settings
from crypto_ml.data.table import Columns, TableSource
from crypto_ml.data.table_checks import as_given
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.table_output import TableOutput, failures_path
from crypto_ml.dispatch.table_run import TablePlan
from crypto_ml.models import (
    DEFAULT_HORIZON,
    DEFAULT_MODEL,
    check_horizon,
    check_option_names,
    check_option_values,
    check_window,
    parse_fallback,
    parse_models,
)
from crypto_ml.models.intervals import DEFAULT_LEVELS, check_levels

#: ``crypto_ml.forecast``'s names of the id, time and value columns (statsforecast's).
FRAME_COLUMNS = ("id_col", "time_col", "target_col")


def forecast_frame(df: pd.DataFrame | str | Path, settings: Settings,
                   model: str | Sequence[str] = DEFAULT_MODEL, horizon: int = DEFAULT_HORIZON,
                   levels: Sequence[float] = DEFAULT_LEVELS, id_col: str = "unique_id",
                   time_col: str = "ds", target_col: str = "y", max_points: int | None = None,
                   fallback_model: str | None = None, err: TextIO | None = None,
                   **options: Any) -> pd.DataFrame:
    """Forecast every series of ``df``: ``unique_id, ds, <model>, <model>-lo-<level>, ...``
    (the id and time columns named as in ``df``);
    a series a model fails on gets ``fallback_model``'s forecast there, if one is named."""
    columns = Columns(id_col, time_col, target_col)
    horizon = check_horizon(horizon)
    if (why := settings.horizon_problem(horizon)) is not None:
        raise ConfigError(f"horizon {why}")
    models = parse_models(model)
    fallback = None if fallback_model is None else parse_fallback(fallback_model, models)
    levels = check_levels(levels)
    max_points = _check_options([*models, *([fallback] if fallback else [])], max_points,
                                options, bool(levels))
    try:
        source = _source(df, columns)
        source.check()
    except InvalidTable as exc:
        raise _in_python_words(exc, df) from None
    plan = TablePlan.of(models, horizon, levels, max_points, options or None,
                        fallback=fallback)
    manager = CryptoManager(settings=settings, err=err)
    with tempfile.TemporaryDirectory(prefix="crypto-ml-") as folder:
        out = Path(folder) / "forecast.parquet"
        summary = manager.run_table(source, TableOutput(out, plan.describe(source)), plan)
        if summary.chunks_failed:
            first = next(iter(summary.chunks_failed.values()))
            advice = "call again" if summary.retry_helps() else "fix the call"
            raise CryptoMLError(f"{len(summary.chunks_failed)} chunk(s) of series did not come "
                                f"back ({first}); {advice}")
        result = _as_datetimes(pq.read_table(out)).to_pandas()
        failures = pd.read_parquet(failures_path(out))
    # the caller's own names, as statsforecast answers, so the forecasts merge onto the input
    result = result.rename(columns={"unique_id": id_col, "ds": time_col})
    result.attrs["failures"] = failures.rename(columns={"unique_id": id_col}).to_dict("records")
    return result


def _source(df: object, columns: Columns) -> TableSource:
    """The table of ``df`` (a frame, or a table's path), or a CryptoMLError naming what is
    wrong with the frame's columns."""
    if isinstance(df, str | Path):
        return TableSource(Path(df), columns)
    if not isinstance(df, pd.DataFrame):
        raise CryptoMLError(f"expected a long-format pandas DataFrame or a table's path, got "
                            f"{type(df).__name__}")
    names = [columns.id, columns.time, columns.value]
    missing = [c for c in names if c not in df.columns]
    if missing:
        index = (f"; {missing[0]!r} is the frame's index: pass df.reset_index()"
                 if missing[0] in (df.index.names or []) else "")
        raise InvalidTable(f"the frame has no column {', '.join(map(repr, missing))} "
                            f"(it has {', '.join(map(str, df.columns))}){index}; name yours "
                            "with id_col, time_col and target_col")
    twice = [c for c in names if (df.columns == c).sum() > 1]
    if twice:
        raise InvalidTable(f"the frame has {int((df.columns == twice[0]).sum())} columns "
                            f"named {twice[0]!r}; keep one")
    return TableSource(_arrow_table(df, names), columns)


def _in_python_words(exc: InvalidTable, df: object) -> InvalidTable:
    """A table check's error naming the frame (or the path as given), not ``--input``."""
    if isinstance(df, str | Path):
        return InvalidTable(as_given(str(exc), f"table {str(df)!r}", Path(df), str(df),
                                     FRAME_COLUMNS))
    return InvalidTable(as_given(str(exc), "the frame", columns=FRAME_COLUMNS))


def _as_datetimes(table: pa.Table) -> pa.Table:
    """Dates (a date32 column of a Parquet or CSV table) as pandas' datetimes, as statsforecast
    gives them and as ``pd.read_csv(..., parse_dates=...)`` reads them back."""
    i = table.schema.get_field_index("ds")
    if pa.types.is_date(table.schema.field(i).type):
        try:
            return table.set_column(i, "ds", table.column(i).cast(pa.timestamp("ns")))
        except pa.ArrowInvalid:  # past 2262, where pandas' nanoseconds end: dates they stay
            return table
    return table


def _arrow_table(df: pd.DataFrame, names: list[str]) -> pa.Table:
    """The frame's id, time and value columns in Arrow; a CryptoMLError naming a column
    Arrow cannot hold (mixed types, say). Periods become their start times."""
    arrays = []
    for name in names:
        values = df[name]
        if isinstance(values.dtype, pd.PeriodDtype):
            values = values.dt.to_timestamp()
        try:
            arrays.append(pa.array(values, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise InvalidTable(f"the frame's column {name!r} cannot be read ({exc}); give "
                                "it one type: text ids, dates or integers, numbers") from None
    return pa.Table.from_arrays(arrays, names=names)


#: statsforecast's keywords, and what forecast() takes instead
STATSFORECAST_WORDS = {
    "h": "takes horizon=, not h=",
    "level": "takes levels=, not level=",
    "models": "takes model= names ('naive,ets'), not models=",
    "freq": "reads each series' step off its times (docs/tables.md): there is no freq=",
    "n_jobs": "runs on the cluster's workers: there is no n_jobs=",
    "fitted": "returns the forecasts only: there is no fitted=",
    "df": "takes the frame as its first argument",
}


def _check_options(models: Sequence[str], max_points: object, options: dict[str, Any],
                   intervals: bool) -> int | None:
    """``max_points`` as an int (or None); a CryptoMLError, before any work, for a statsforecast
    keyword, an option no model takes (a typo), a value out of range or too few closes."""
    for name in options:
        if name in STATSFORECAST_WORDS:
            raise ConfigError(f"forecast() {STATSFORECAST_WORDS[name]} (got {name}=, "
                              "statsforecast's word)")
    check_option_names(models, options, "forecast() got {}")
    check_option_values(models, options, "model {!r}")
    return check_window(max_points, models, options, intervals)  # the options checked first
