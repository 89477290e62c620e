"""``lstm_ret`` and ``gru_ret``: recurrent networks that predict returns, not levels.

What the backtest (:mod:`crypto_ml.backtest`) suggested trying on top of the
original ``lstm``/``gru`` (:mod:`crypto_ml.models.rnn`):

* the target is the next daily log return, from the previous ``window`` log
  returns, both divided by the training returns' standard deviation, so the
  network never has to extrapolate a price level it has not seen;
* up to ``epochs`` epochs, stopped early when the loss on the chronologically
  last 20% of the windows (a validation split the fit never trains on) has not
  improved for ``patience`` epochs, keeping the best weights;
* an ensemble of ``members`` small networks (recurrent(``units``) -> Dense(1))
  seeded ``seed``, ``seed + 1``, ...; their return paths are averaged.

Forecasts are recursive in return space; the price path is the last close
times ``exp(cumsum(returns))``. Keras is imported on first fit only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from crypto_ml.models.base import MAX_SEED, Forecaster, int_option, positive_prices
from crypto_ml.models.device import keras_and_device
from crypto_ml.models.intervals import (
    Bands,
    calibration_origins,
    origin_bands,
    required_origins,
)
from crypto_ml.models.rnn import seeded_network
from crypto_ml.models.state import ModelState, member_weights, weight_arrays

VALIDATION_SHARE = 0.2
BATCH_SIZE = 64
MIN_WINDOWS = 10


def return_windows(returns: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of ``window`` returns (N, window, 1) and the return after each (N,)."""
    starts = np.arange(len(returns) - window)[:, None]
    x = returns[starts + np.arange(window)[None, :]]
    return x[:, :, None].astype("float32"), returns[window:].astype("float32")


class ReturnsRecurrentModel(Forecaster):
    """An early-stopped ensemble of recurrent networks on scaled log returns; the subclasses
    :class:`LSTMReturnsModel` and :class:`GRUReturnsModel` pick the cell."""

    cell: ClassVar[str]
    options = frozenset({"epochs", "seed", "window", "patience", "members", "units"})
    heavy = True
    has_state = True
    stored = True
    interval_method = "conformal (validation origins of the fitted ensemble)"
    #: The whole history by default: on the README's 10-coin backtest both did better with
    #: it than on the newest 200 closes (MASE 23.1 / 22.4 against 26.6 / 24.6).
    default_max_points = 0

    def __init__(self, epochs: int = 30, seed: int = 42, window: int = 20,
                 patience: int = 5, members: int = 3, units: int = 32) -> None:
        self.epochs = int_option("epochs", epochs, 1, 1000)
        self.window = int_option("window", window, 2, 1000)
        self.patience = int_option("patience", patience, 1, 1000)
        self.members = int_option("members", members, 1, 20)
        self.units = int_option("units", units, 1, 1024)
        self.seed = int_option("seed", seed, 0, MAX_SEED - self.members + 1)  # member i: seed + i
        self.min_points = self.window + MIN_WINDOWS + 1

    def _build(self, keras: Any) -> Any:
        layer = keras.layers.LSTM if self.cell == "lstm" else keras.layers.GRU
        model = keras.Sequential([keras.Input(shape=(self.window, 1)), layer(self.units),
                                  keras.layers.Dense(1)])
        model.compile(loss="mse", optimizer=keras.optimizers.Adam(learning_rate=1e-3))
        return model

    def _network(self, keras: Any, seed: int) -> Any:
        """This process's network for (cell, window, units, seed) (:func:`seeded_network`)."""
        return seeded_network(keras, (self.cell, self.window, self.units, seed), seed,
                              self.window, self._build)

    def _fit(self, series: np.ndarray) -> None:
        positive_prices(series, "to take log returns")
        keras, self.device = keras_and_device()
        returns = np.diff(np.log(series))
        self.scale_ = float(np.std(returns)) or 1.0
        x, y = return_windows(returns / self.scale_, self.window)
        n_val = max(1, round(len(y) * VALIDATION_SHARE))
        self.n_val_ = n_val
        self.weights_: list[list[np.ndarray]] = []
        self.tail_ = returns[-self.window :] / self.scale_
        self.last_ = float(series[-1])
        for member in range(self.members):
            net = self._network(keras, self.seed + member)
            stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience,
                                                 restore_best_weights=True)
            net.fit(x[:-n_val], y[:-n_val], validation_data=(x[-n_val:], y[-n_val:]),
                    batch_size=BATCH_SIZE, epochs=self.epochs, shuffle=True, verbose=0,
                    callbacks=[stop])
            self.weights_.append(net.get_weights())  # the shared network is reset by the next fit

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        counts, arrays = weight_arrays(self.weights_)
        header = {"members": counts, "scale": self.scale_, "last": self.last_,
                  "n_val": self.n_val_}
        return header, {"tail": self.tail_, **arrays}

    def _restore(self, state: ModelState) -> None:
        self.weights_ = member_weights(state, state.value("members"))
        self.tail_ = state.array("tail")
        self.scale_ = float(state.value("scale"))
        self.last_ = float(state.value("last"))
        self.n_val_ = int(state.value("n_val"))

    def _paths(self, net: Any, tails: np.ndarray, h: int) -> np.ndarray:
        """``h`` scaled returns predicted recursively after each row of ``tails`` (B, window)."""
        history = np.asarray(tails, dtype=np.float64)
        for _ in range(h):
            x = history[:, -self.window :, None].astype("float32")
            step = np.asarray(net.predict_on_batch(x), dtype=np.float64).reshape(-1)
            history = np.column_stack([history, step])
        return history[:, -h:]

    def _price_paths(self, tails: np.ndarray, last: np.ndarray, h: int) -> np.ndarray:
        """The ensemble's mean return paths after each tail, as closes after ``last`` (B,)."""
        keras, self.device = keras_and_device()  # a restored model runs where it is now
        paths = []
        for member, weights in enumerate(self.weights_):
            net = self._network(keras, self.seed + member)
            net.set_weights(weights)
            paths.append(self._paths(net, tails, h))
        returns = np.mean(paths, axis=0) * self.scale_
        return last[:, None] * np.exp(np.cumsum(returns, axis=1))

    def _forecast(self, h: int) -> np.ndarray:
        return self._price_paths(self.tail_[None, :], np.array([self.last_]), h)[0]

    def _bands(self, h: int, forecast: np.ndarray, levels: Sequence[float]) -> Bands:
        """Conformal bands from the ensemble's forecasts at origins inside its validation split
        (the chronologically last windows, which the networks never trained on; they only
        chose when to stop). Falls back to earlier origins when that split is shorter than h."""
        series = self.series_
        n = len(series)
        min_train = max(self.window + 1, n - self.n_val_)
        origins = (calibration_origins(n, h, min_train)
                   or required_origins(n, h, self.window + 1))
        log_returns = np.diff(np.log(series)) / self.scale_
        tails = np.stack([log_returns[o - 1 - self.window : o - 1] for o in origins])
        last = np.array([series[o - 1] for o in origins])
        return origin_bands(series, forecast, levels, origins,
                            self._price_paths(tails, last, h))


class LSTMReturnsModel(ReturnsRecurrentModel):
    """``lstm_ret``: LSTM cells."""

    name = "lstm_ret"
    cell = "lstm"
    color = "tab:purple"


class GRUReturnsModel(ReturnsRecurrentModel):
    """``gru_ret``: GRU cells."""

    name = "gru_ret"
    cell = "gru"
    color = "tab:brown"
