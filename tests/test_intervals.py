"""Prediction intervals and their scores: the pieces checked by hand, the methods by simulation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from crypto_ml.backtest.metrics import geometric_mean, interval_scores, relative_mae
from crypto_ml.core.errors import InvalidTaskInput
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.models import default_max_points, get_model, model_class
from crypto_ml.models.batch import predict_batch
from crypto_ml.models.intervals import (
    calibration_origins,
    check_levels,
    conformal_bands,
    conformal_quantile,
    level_key,
    normal_quantile,
    random_walk_bands,
)


def test_levels_are_checked_sorted_and_deduplicated() -> None:
    assert check_levels("95,80,80") == (80.0, 95.0)
    assert check_levels([99.5]) == (99.5,)
    assert check_levels([]) == ()
    assert check_levels([99.99999, 80]) == (80.0, 99.99999)
    assert [level_key(v) for v in (80.0, 99.5, 99.99999, 0.1 + 0.2)] == ["80", "99.5", "99.99999",
                                                                         "0.3"]
    for bad in ([0], [100], ["wide"], [True], 7, [float("nan")]):
        with pytest.raises(InvalidTaskInput):
            check_levels(bad)
    for rounded in (99.99999999999999, 99.99999999999996):  # every forecast NaN, as "100"
        with pytest.raises(InvalidTaskInput, match="below 100 by more than rounding"):
            check_levels([rounded])
    assert check_levels([99.9999999999999]) == (99.9999999999999,)
    assert np.isfinite(normal_quantile(99.9999999999999))


def test_random_walk_bands_follow_the_square_root_of_time() -> None:
    series = np.array([100.0, 110.0, 99.0, 104.0, 101.0])
    r = np.diff(np.log(series))  # oldest first; EWMA weights 0.94^3, 0.94^2, 0.94, 1
    w = 0.94 ** np.array([3.0, 2.0, 1.0, 0.0])
    sigma = np.sqrt(np.sum(w * r**2) / np.sum(w))
    z95 = 1.959963984540054  # the normal quantile of 0.975
    lower, upper = random_walk_bands(series, 4, [95])["95"]
    k = np.arange(1, 5)
    np.testing.assert_allclose(upper, 101.0 * np.exp(z95 * sigma * np.sqrt(k)))
    np.testing.assert_allclose(lower, 101.0 * np.exp(-z95 * sigma * np.sqrt(k)))


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    errors = -np.arange(1.0, 21.0)[:, None]  # |e| = 1..20 in one column, signs do not matter
    assert conformal_quantile(errors, 80)[0] == 17  # ceil(21 * 0.8) = 17th smallest
    assert conformal_quantile(errors, 95)[0] == 20  # ceil(21 * 0.95) = 20th
    assert conformal_quantile(errors[:5], 95)[0] == 5  # too few windows: the largest
    forecast = np.array([50.0])
    lower, upper = conformal_bands(forecast, 10.0, errors / 100, [80])["80"]
    assert lower[0] == pytest.approx(50 - 1.7) and upper[0] == pytest.approx(50 + 1.7)


def test_calibration_origins_are_h_apart_when_the_series_allows() -> None:
    assert calibration_origins(300, 10, 20) == list(range(290, 90, -10))
    short = calibration_origins(60, 10, 20)
    assert len(short) == 20 and short[0] == 50 and short[-1] == 31  # one day apart
    assert calibration_origins(25, 10, 20) == []


def test_naive_intervals_cover_a_simulated_random_walk_at_their_level() -> None:
    """On log-normal random walks the naive bands hold the next closes about L% of the time."""
    rng = np.random.default_rng(11)
    inside = {"80": [], "95": []}
    for _ in range(400):
        path = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.04, 210)))
        prediction = get_model("naive").fit(path[:200]).predict(10, (80, 95))
        for key, (lower, upper) in prediction.bands.items():
            inside[key].extend((path[200:] >= lower) & (path[200:] <= upper))
    assert abs(100 * np.mean(inside["80"]) - 80) < 5
    assert abs(100 * np.mean(inside["95"]) - 95) < 3


def test_a_series_that_is_not_a_price_gets_a_walk_in_its_value_that_covers() -> None:
    """Below zero (log returns mean nothing there) the naive bands are ``last +- z sigma
    sqrt(k)`` of the daily changes: symmetric, and holding the next values about L% of the
    time (they were zero wide)."""
    rng = np.random.default_rng(12)
    inside = []
    for _ in range(400):
        path = -50.0 + np.cumsum(rng.normal(0.0, 2.0, 210))
        prediction = get_model("naive").fit(path[:200]).predict(10, (80,))
        lower, upper = prediction.bands["80"]
        np.testing.assert_allclose(upper - prediction.forecast, prediction.forecast - lower)
        inside.extend((path[200:] >= lower) & (path[200:] <= upper))
    assert abs(100 * np.mean(inside) - 80) < 5


def test_one_close_gets_no_intervals_of_no_width_on_either_path() -> None:
    """A single close has no daily change to size a random walk: its naive forecast fails,
    naming why and what to do, one series at a time and in a table's batch alike (it was
    written with bands of no width); with no intervals asked, the forecast stands."""
    with pytest.raises(InvalidTaskInput, match=r"1-close series.*--levels none"):
        get_model("naive").fit(np.array([5.0])).predict(3, (80, 95))
    assert get_model("naive").fit(np.array([5.0])).predict(3, ()).forecast.tolist() == [5.0] * 3
    batch = predict_batch(model_class("naive"), [np.array([5.0]), np.array([4.0, 5.0])], 3,
                          (80,))
    assert "1-close series" in batch.errors[0] and 1 not in batch.errors
    lower, upper = batch.bands["80"]
    assert np.isnan(lower[0]).all() and (upper[1] > lower[1]).all()


def test_a_last_close_of_zero_gets_random_walk_widths_not_none() -> None:
    """Conformal widths are relative to the last close: at 0 they were all 0 (a table's linear
    forecast of 4,175 written with lo-95 = hi-95). Now the forecast gets random-walk widths
    around it instead, and says so; the table's batch path gives the same numbers."""
    rng = np.random.default_rng(3)
    series = np.append(100.0 + np.cumsum(rng.normal(0.0, 2.0, 99)), 0.0)
    prediction = get_model("linear").fit(series).predict(5, (95,))
    lower, upper = prediction.bands["95"]
    assert (upper - lower > 0).all()
    assert prediction.method.startswith("random walk (a last close of 0")
    batch = predict_batch(model_class("linear"), [series, series + 1.0], 5, (95,))
    np.testing.assert_allclose(batch.bands["95"][0][0], lower)
    np.testing.assert_allclose(batch.bands["95"][1][0], upper)
    not_a_price = np.append(np.cumsum(rng.normal(0.0, 2.0, 99)) - 50.0, 0.0)
    lower, upper = get_model("linear").fit(not_a_price).predict(5, (95,)).bands["95"]
    assert (upper - lower > 0).all()  # a walk in the value itself, around the forecast


def test_conformal_intervals_cover_a_simulated_random_walk_roughly() -> None:
    """The linear model's conformal bands, calibrated on its own walk-forward errors, hold
    the next closes of a driftless walk at about their level (20 windows: coarse)."""
    rng = np.random.default_rng(5)
    inside = []
    for _ in range(60):
        path = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.03, 210)))
        lower, upper = get_model("linear").fit(path[:200]).predict(10, (80,)).bands["80"]
        inside.extend((path[200:] >= lower) & (path[200:] <= upper))
    assert 65 < 100 * np.mean(inside) < 95


def test_interval_scores_by_hand() -> None:
    actual = np.array([[10.0, 20.0]])
    lower, upper = np.array([[9.0, 9.0]]), np.array([[11.0, 15.0]])
    got = interval_scores(actual, lower, upper, 80, np.array([2.0]))
    assert got["coverage_80"] == pytest.approx(50.0)
    # widths 2 and 6; the second actual is 5 above: 6 + 2 / 0.2 * 5 = 56; mean 29, over scale 2
    assert got["winkler_80"] == pytest.approx(14.5)


def test_rel_mae_and_its_geometric_mean() -> None:
    by_model = {"naive": {"mae": 2.0}, "ets": {"mae": 1.0}}
    assert relative_mae(by_model, "ets") == 0.5 and relative_mae(by_model, "naive") == 1.0
    assert geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    assert geometric_mean([4.0, 1.0]) == pytest.approx(2.0)
    assert math.isnan(geometric_mean([]))


def test_linear_calibration_shortcut_equals_a_refit() -> None:
    rng = np.random.default_rng(2)
    series = 20.0 * np.exp(np.cumsum(rng.normal(0.0, 0.05, 90)))
    model = get_model("linear").fit(series)
    np.testing.assert_allclose(model._calibration_forecast(series[:70], 6),
                               get_model("linear").fit(series[:70]).forecast(6), rtol=1e-9)


@pytest.mark.integration  # reads the real data set
@pytest.mark.parametrize("name", ["naive", "linear", "theta"])
def test_no_bound_of_any_coin_goes_below_zero(name: str, real_data: Path) -> None:
    """Every coin of the real set, as send-tasks forecasts it (the model's default window,
    80/95 % intervals, 10 days): a price's bounds never go below zero. Naive's are
    multiplicative, linear's conformal ones additive (ripple's 95 % band once reached -0.2),
    theta stands for the statsforecast models (fitted on log closes, like ets and arima)."""
    loader = CryptoLoader(real_data)
    window = default_max_points(name)
    below = []
    for coin in loader.get_crypto_names():
        _, closes = loader.get_closes(coin)
        closes = closes[~np.isnan(closes)][-window:] if window else closes[~np.isnan(closes)]
        model = get_model(name)
        if len(closes) < max(model.min_points, 30):
            continue
        prediction = model.fit(closes).predict(10, (80, 95))
        below += [(coin, level) for level, (lower, _) in prediction.bands.items()
                  if (np.asarray(lower) < 0).any()]
    assert below == [], below
