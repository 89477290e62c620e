"""A fitted model's state as plain data: what a model saves and restores itself from.

A :class:`ModelState` is a JSON-safe header (str, int, float, bool, None, and
lists and dicts of them) plus named numeric NumPy arrays, nothing else: whoever
keeps it (the model store, :mod:`crypto_ml.worker.model_store`) writes the header
as JSON and the arrays as ``.npz`` and reads them back with ``allow_pickle=False``,
without knowing what any model keeps in them. Each model writes its own part in
:meth:`~crypto_ml.models.base.Forecaster.state` and reads it back in
:meth:`~crypto_ml.models.base.Forecaster.restore`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto_ml.core.errors import CryptoMLError

#: Array dtypes a state may hold: bool, signed and unsigned integers, floats.
_PLAIN_KINDS = "biuf"


class ModelStateError(CryptoMLError, ValueError):
    """A model state that is not plain data, or that another model or other options saved."""


@dataclass(frozen=True)
class ModelState:
    """What a fitted model needs to forecast again without training.

    ``model``, ``options``, ``n_points`` and ``device``: the name and options of the model
    that saved it, how many closes it was fitted on and where it ran; ``header`` and
    ``arrays``: the model's own JSON values and numeric arrays (names that are Python
    identifiers); ``closes``: :func:`closes_digest` of the closes it was fitted on.
    """

    model: str
    options: dict[str, Any]
    n_points: int
    device: str
    header: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    closes: str = ""

    def __post_init__(self) -> None:
        meta = self.meta()
        try:
            same = json.loads(json.dumps(meta, allow_nan=False)) == meta
        except (TypeError, ValueError) as exc:
            raise ModelStateError(f"{self.model} state: header is not plain JSON ({exc})") from None
        if not same:  # e.g. a tuple, which JSON gives back as a list
            raise ModelStateError(f"{self.model} state: header does not survive JSON: {meta!r}")
        for name, array in self.arrays.items():
            if not name.isidentifier() or not isinstance(array, np.ndarray) \
                    or array.dtype.kind not in _PLAIN_KINDS:
                raise ModelStateError(f"{self.model} state: array {name!r} is not a numeric "
                                      f"NumPy array ({type(array).__name__})")

    def meta(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON values."""
        return {"model": self.model, "options": self.options, "n_points": self.n_points,
                "device": self.device, "header": self.header, "closes": self.closes}

    @classmethod
    def from_plain(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ModelState:
        """The state :meth:`meta` and :attr:`arrays` were taken from (e.g. read back from JSON
        and ``.npz``); ModelStateError if ``meta`` is not one."""
        try:
            return cls(str(meta["model"]), dict(meta["options"]), int(meta["n_points"]),
                       str(meta["device"]), dict(meta["header"]), dict(arrays),
                       str(meta["closes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStateError(f"not a model state ({type(exc).__name__}: {exc})") from None

    def array(self, name: str) -> np.ndarray:
        """The array ``name``, or ModelStateError naming it."""
        if name not in self.arrays:
            raise ModelStateError(f"{self.model} state has no array {name!r}")
        return self.arrays[name]

    def value(self, name: str) -> Any:
        """The header value ``name``, or ModelStateError naming it."""
        if name not in self.header:
            raise ModelStateError(f"{self.model} state has no header value {name!r}")
        return self.header[name]

    def check_fits(self, model: str, options: Mapping[str, Any], series: np.ndarray) -> None:
        """ModelStateError unless this state was saved by ``model`` with ``options``, fitted on
        the closes ``series``."""
        if (self.model, dict(self.options)) != (model, dict(options)):
            raise ModelStateError(f"state of model {self.model!r} with options {self.options}, "
                                  f"not of {model!r} with {dict(options)}")
        if self.n_points != len(series):
            raise ModelStateError(f"{self.model} state was fitted on {self.n_points} closes, "
                                  f"given {len(series)}")
        if self.closes != closes_digest(series):
            raise ModelStateError(f"{self.model} state was fitted on other closes than those "
                                  f"given (as many, {len(series)}, but not the same)")


def closes_digest(series: np.ndarray) -> str:
    """What tells one series of closes from another: SHA-256 of their float64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(series, dtype=np.float64).tobytes()).hexdigest()


def weight_arrays(members: Sequence[Sequence[np.ndarray]]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Networks' weight lists as ``(counts, arrays)``: member m's i-th array is ``m{m}_w{i}``."""
    arrays = {f"m{m}_w{i}": np.asarray(w) for m, weights in enumerate(members)
              for i, w in enumerate(weights)}
    return [len(weights) for weights in members], arrays


def member_weights(state: ModelState, counts: Sequence[int]) -> list[list[np.ndarray]]:
    """The weight lists :func:`weight_arrays` stored as ``counts`` in ``state``."""
    return [[state.array(f"m{m}_w{i}") for i in range(int(n))] for m, n in enumerate(counts)]
