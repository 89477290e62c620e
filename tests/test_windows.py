"""A fitting window (``max_points``) too small for the models is refused alike by every
entry point: the command line, the HTTP API, ``CryptoManager.send_tasks`` and
``crypto_ml.forecast`` (the last two fitted on it and sized intervals on a few closes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crypto_ml.core.errors import BrokerUnavailable, ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.frames import forecast_frame
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.models import check_window
from crypto_ml.worker.app import create_app

NOWHERE = Settings(broker_url="redis://127.0.0.1:1/0")  # nothing listens: refused first


@pytest.mark.parametrize(("window", "models", "intervals", "want"), [
    (None, ("naive",), True, None),
    (0, ("lstm",), True, 0),
    (20, ("naive",), True, 20),
    (np.int64(25), ("linear",), True, 25),
    (2, ("linear",), False, 2),  # a line through two closes, no interval to calibrate
])
def test_a_window_the_models_can_fit_on_is_taken(window: object, models: tuple[str, ...],
                                                 intervals: bool, want: int | None) -> None:
    assert check_window(window, models, None, intervals) == want


@pytest.mark.parametrize(("window", "models", "says"), [
    (5, ("naive",), "max_points 5 is too few: naive fits and calibrates its prediction "
     "intervals on at least 20 closes; give 20 or more, or 0 for the whole history"),
    (30, ("naive", "lstm"), "max_points 30 is too few: lstm"),
    (-1, ("naive",), "max_points must be a whole number of closes (0: all), got -1"),
    (True, ("naive",), "max_points must be a whole number of closes"),
    (2.5, ("naive",), "max_points must be a whole number of closes"),
])
def test_a_window_too_small_or_no_number_is_refused(window: object, models: tuple[str, ...],
                                                    says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_window(window, models)
    assert str(refused.value).startswith(says), refused.value


def test_python_callers_are_refused_before_any_work() -> None:
    manager = CryptoManager(app=create_app(NOWHERE))
    with pytest.raises(ConfigError, match="max_points 5 is too few: naive"):
        manager.send_tasks("naive", ["bitcoin"], max_points=5)
    frame = pd.DataFrame({"unique_id": "s", "ds": pd.date_range("2017-01-01", periods=40),
                          "y": np.arange(40.0) + 1})
    with pytest.raises(ConfigError, match="max_points 5 is too few: naive"):
        forecast_frame(frame, NOWHERE, "naive", max_points=5)
    # a bad option is named as such, whatever the window (it was an InvalidTaskInput with one)
    with pytest.raises(ConfigError, match="model 'lstm': epochs must be"):
        forecast_frame(frame, NOWHERE, "lstm", max_points=30, epochs=0)
    # without intervals a short window is what the caller asked for: refused only later,
    # by the cluster nobody listens on
    with pytest.raises(BrokerUnavailable):
        forecast_frame(frame, NOWHERE, "linear", levels=(), max_points=5)
