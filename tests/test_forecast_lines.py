"""The command line's forecast line (pure code): every value of the horizon is on it."""

from __future__ import annotations

import numpy as np

from crypto_ml.dispatch.report import format_forecast


def test_a_long_horizon_is_printed_whole() -> None:
    # numpy summarised arrays over 1,000 values as "a b c ... x y z": values went missing
    forecast = np.arange(1500, dtype=np.float64) + 0.5
    line = format_forecast("bitcoin", forecast, "naive")
    assert "..." not in line and "\n" not in line
    values = line.removeprefix("bitcoin naive [[").removesuffix("]]").split()
    np.testing.assert_array_equal(np.array(values, dtype=np.float64), forecast)
