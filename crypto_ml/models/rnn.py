"""LSTM and GRU forecasters: the recurrent network the product was demonstrated with.

Windows of ``window`` closes, each normalised by its first close as p/p0 - 1,
predict the next normalised close. Network: recurrent(50, sequences) ->
dropout 0.2 -> recurrent(100) -> dropout 0.2 -> Dense(1), mse, rmsprop, batch
512. Layers keep their default activations and no recurrent dropout, so
TensorFlow uses the cuDNN kernel on a GPU. Forecasts are recursive: each
prediction joins the window before the next one. Code here is backend-neutral
Keras 3; the backend is imported on first fit, never at module import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from crypto_ml.models.base import MAX_SEED, Forecaster, int_option, positive_prices
from crypto_ml.models.device import keras_and_device
from crypto_ml.models.intervals import Bands, origin_bands, required_origins
from crypto_ml.models.state import ModelState, member_weights, weight_arrays

WINDOW = 50
BATCH_SIZE = 512
#: Compiled networks of this process, by their model's configuration, with their initial state.
_NETWORKS: dict[tuple[Any, ...], tuple[Any, list[np.ndarray]]] = {}


def make_windows(series: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Every run of ``window + 1`` closes over its first close, minus 1: x (N, window, 1), y (N,)."""
    starts = np.arange(len(series) - window)[:, None]
    runs = series[starts + np.arange(window + 1)[None, :]]
    norm = runs / runs[:, :1] - 1.0
    return norm[:, :-1, None].astype("float32"), norm[:, -1].astype("float32")


def built_state(net: Any, window: int) -> list[np.ndarray]:
    """Build a compiled network's optimizer, loss and metric state; return the starting values
    of its variables, then its optimizer's, for every later fit to restore.

    The loss and metric state is built here on a zero batch (evaluation: no dropout, no
    shuffle). Else the first fit builds it from a peek at a shuffled batch, which on the torch
    backend draws from the seeded RNG, and that fit alone would differ from the later ones.
    """
    net.optimizer.build(net.trainable_variables)
    net.test_on_batch(np.zeros((1, window, 1), "float32"), np.zeros(1, "float32"))
    return [v.numpy() for v in (*net.variables, *net.optimizer.variables)]


def seeded_network(keras: Any, key: tuple[Any, ...], seed: int, window: int,
                   build: Callable[[Any], Any]) -> Any:
    """This process's compiled network for ``key`` (a configuration), reset to its seeded start.

    Building and tracing a network costs far more than training it on one coin, so a worker
    builds each configuration once (``build(keras)``, after seeding) and, before each fit,
    restores the weights and optimizer state it had when first built: every fit starts
    exactly as a freshly built, seeded network would. Keras's RNG is seeded again last.
    """
    if key not in _NETWORKS:
        keras.utils.set_random_seed(seed)
        net = build(keras)
        _NETWORKS[key] = (net, built_state(net, window))
    net, initial = _NETWORKS[key]
    for variable, value in zip((*net.variables, *net.optimizer.variables), initial, strict=True):
        variable.assign(value)
    keras.utils.set_random_seed(seed)
    return net


class RecurrentModel(Forecaster):
    """A two-layer recurrent network; :class:`LSTMModel` and :class:`GRUModel` pick the cell."""

    cell: ClassVar[str]
    options = frozenset({"epochs", "seed", "window"})
    heavy = True
    has_state = True
    stored = True
    interval_method = "conformal (in-sample origins of the fitted network)"
    #: The whole history by default: on the README's 10-coin backtest gru did better with it
    #: than on the newest 200 closes (MASE 30.9 against 39.5); lstm did not (see LSTMModel).
    default_max_points = 0

    def __init__(self, epochs: int = 1, seed: int = 42, window: int = WINDOW) -> None:
        self.epochs = int_option("epochs", epochs, 1, 1000)
        self.window = int_option("window", window, 2, 1000)
        self.seed = int_option("seed", seed, 0, MAX_SEED)
        self.min_points = window + 1

    def _build(self, keras: Any) -> Any:
        layer = keras.layers.LSTM if self.cell == "lstm" else keras.layers.GRU
        model = keras.Sequential([
            keras.Input(shape=(self.window, 1)),
            layer(50, return_sequences=True),
            keras.layers.Dropout(0.2),
            layer(100),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, activation="linear"),
        ])
        model.compile(loss="mse", optimizer="rmsprop")
        return model

    def _network(self, keras: Any) -> Any:
        """This process's network for (cell, window, seed) (:func:`seeded_network`)."""
        return seeded_network(keras, (self.cell, self.window, self.seed), self.seed,
                              self.window, self._build)

    def _fit(self, series: np.ndarray) -> None:
        positive_prices(series, "for the p/p0 - 1 normalisation")
        keras, self.device = keras_and_device()
        x, y = make_windows(series, self.window)
        net = self._network(keras)
        net.fit(x, y, batch_size=BATCH_SIZE, epochs=self.epochs, shuffle=True, verbose=0)
        self.weights_ = net.get_weights()  # the shared network is reset by the next fit
        self.tail_ = series[-self.window :].copy()

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        counts, arrays = weight_arrays([self.weights_])
        return {"members": counts}, {"tail": self.tail_, **arrays}

    def _restore(self, state: ModelState) -> None:
        [self.weights_] = member_weights(state, state.value("members"))
        self.tail_ = state.array("tail")

    def _paths(self, tails: np.ndarray, h: int) -> np.ndarray:
        """Recursive forecasts of ``h`` closes after each row of ``tails`` (B, window), at once."""
        keras, self.device = keras_and_device()  # a restored model runs where it is now
        net = self._network(keras)
        net.set_weights(self.weights_)
        history = np.asarray(tails, dtype=np.float64)
        for _ in range(h):
            window = history[:, -self.window :]
            x = (window / window[:, :1] - 1.0)[:, :, None].astype("float32")
            step = np.asarray(net.predict_on_batch(x), dtype=np.float64).reshape(-1)
            history = np.column_stack([history, window[:, 0] * (step + 1.0)])
        return history[:, -h:]

    def _forecast(self, h: int) -> np.ndarray:
        return self._paths(self.tail_[None, :], h)[0]

    def _bands(self, h: int, forecast: np.ndarray, levels: Sequence[float]) -> Bands:
        """Conformal bands from the fitted network's own forecasts at earlier origins of its
        training series (no refit: a refit per window would cost as much as the fit again)."""
        series = self.series_
        origins = required_origins(len(series), h, self.window)
        tails = np.stack([series[o - self.window : o] for o in origins])
        return origin_bands(series, forecast, levels, origins, self._paths(tails, h))


class LSTMModel(RecurrentModel):
    """The LSTM network the product was demonstrated with."""

    name = "lstm"
    cell = "lstm"
    color = "tab:orange"
    #: The newest 200 closes, as the cheap models: the backtest found no gain in more history
    #: (10 coins: MASE 38.1 on 200 closes, 49.2 on all of them).
    default_max_points = 200


class GRUModel(RecurrentModel):
    """The same network with GRU cells."""

    name = "gru"
    cell = "gru"
    color = "tab:green"


def warm_up() -> None:
    """Import the backend and build and trace the default networks, so a worker's first
    deep task costs what every later one does."""
    series = 100.0 + np.sin(np.arange(WINDOW * 2, dtype=np.float64)) + np.arange(WINDOW * 2)
    for model in (LSTMModel, GRUModel):
        model().fit(series).forecast(1)
