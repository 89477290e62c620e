"""``crypto_ml.forecast(df)``: a long-format DataFrame (or a table's path) in, forecasts out.

The Python face of table runs, shaped like statsforecast's ``forecast()``: a
statsforecast user switches with one line. The frame goes through the same path as
``send-tasks --input`` (:mod:`~crypto_ml.dispatch.table_run`), on the cluster the
settings name or on the embedded default, into a temporary Parquet file read back
as the result. Failed forecasts are listed in ``result.attrs["failures"]``
(``{"unique_id", "model", "error"}`` records).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import pyarrow as pa

from crypto_ml.core.errors import CryptoMLError
from crypto_ml.core.settings import Settings
from crypto_ml.data.table import Columns, TableSource
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.table_output import TableOutput, failures_path
from crypto_ml.dispatch.table_run import TablePlan
from crypto_ml.models import (
    DEFAULT_HORIZON,
    DEFAULT_MODEL,
    check_horizon,
    check_option_names,
    check_option_values,
    parse_models,
)
from crypto_ml.models.intervals import DEFAULT_LEVELS, check_levels


def forecast_frame(df: pd.DataFrame | str | Path, settings: Settings,
                   model: str | Sequence[str] = DEFAULT_MODEL, horizon: int = DEFAULT_HORIZON,
                   levels: Sequence[float] = DEFAULT_LEVELS, id_col: str = "unique_id",
                   time_col: str = "ds", target_col: str = "y", max_points: int | None = None,
                   err: TextIO | None = None, **options: Any) -> pd.DataFrame:
    """Forecast every series of ``df``: ``unique_id, ds, <model>, <model>-lo-<level>, ...``."""
    columns = Columns(id_col, time_col, target_col)
    check_horizon(horizon)
    if not isinstance(df, pd.DataFrame | str | Path):
        raise CryptoMLError(f"expected a long-format pandas DataFrame or a table's path, got "
                            f"{type(df).__name__}")
    if isinstance(df, pd.DataFrame):
        missing = [c for c in (id_col, time_col, target_col) if c not in df.columns]
        if missing:
            raise CryptoMLError(f"the frame has no column {', '.join(map(repr, missing))} "
                                f"(it has {', '.join(map(str, df.columns))}); name yours "
                                "with id_col, time_col and target_col")
        source = TableSource(_arrow_table(df, [id_col, time_col, target_col]), columns)
    else:
        source = TableSource(Path(df), columns)
    models = parse_models(model)
    _check_options(models, max_points, options)
    source.check()
    plan = TablePlan.of(models, horizon, check_levels(levels), max_points, options or None)
    manager = CryptoManager(settings=settings, err=err)
    with tempfile.TemporaryDirectory(prefix="crypto-ml-") as folder:
        out = Path(folder) / "forecast.parquet"
        summary = manager.run_table(source, TableOutput(out, plan.describe(source)), plan)
        if summary.chunks_failed:
            first = next(iter(summary.chunks_failed.values()))
            advice = "call again" if summary.retry_helps() else "fix the call"
            raise CryptoMLError(f"{len(summary.chunks_failed)} chunk(s) of series did not come "
                                f"back ({first}); {advice}")
        result = pd.read_parquet(out)
        result.attrs["failures"] = pd.read_parquet(failures_path(out)).to_dict("records")
    return result


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
            raise CryptoMLError(f"the frame's column {name!r} cannot be read ({exc}); give "
                                "it one type: text ids, dates or integers, numbers") from None
    return pa.Table.from_arrays(arrays, names=names)


def _check_options(models: Sequence[str], max_points: int | None,
                   options: dict[str, Any]) -> None:
    """A CryptoMLError, before any work, for an option no model takes (a typo) or a value
    out of range."""
    if max_points is not None and (not isinstance(max_points, int) or max_points < 0):
        raise CryptoMLError(f"max_points must be a whole number of closes (0: all), got "
                            f"{max_points!r}")
    check_option_names(models, options, "forecast() got {}")
    check_option_values(models, options, "model {!r}")
