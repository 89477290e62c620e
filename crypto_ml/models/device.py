"""Deep-learning backend start-up: imported lazily, once per process.

Keras (and TensorFlow behind it) is imported only when a recurrent model is
first fitted, so a Celery parent process that forks its pool never holds
TensorFlow. On first use this module asks the backend not to grab all GPU
memory up front (memory growth, per process), finds the device it will train
on and logs it once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)

_QUIET_AND_GROWING = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}


def _tensorflow_device() -> str:
    import tensorflow as tf  # lazy: the backend loads on first fit only (module docstring)

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised: the env var did it
            tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU:0 {details.get('device_name', '')}".strip()


def _torch_device() -> str:
    import torch  # lazy: an optional Keras backend

    return f"GPU:0 {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"


def _jax_device() -> str:
    import jax  # lazy: an optional Keras backend

    dev = jax.devices()[0]
    return "CPU" if dev.platform == "cpu" else f"GPU:0 {dev.device_kind}"


@functools.cache
def keras_and_device() -> tuple[ModuleType, str]:
    """Import Keras once in this process; return it with a description of the training device."""
    for key, value in _QUIET_AND_GROWING.items():
        os.environ.setdefault(key, value)
    import keras  # lazy: the backend loads on first fit only (module docstring)

    backend = keras.backend.backend()
    probe = {"tensorflow": _tensorflow_device, "torch": _torch_device, "jax": _jax_device}
    device = probe.get(backend, lambda: "CPU")()
    log.info("pid %d trains on %s (Keras %s, %s backend)", os.getpid(), device,
                keras.__version__, backend)
    return keras, device


def gpu_available() -> bool:
    """Whether the Keras backend of this process sees a GPU."""
    return keras_and_device()[1].startswith("GPU")
