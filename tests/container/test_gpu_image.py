"""The GPU worker image (docker/Dockerfile.gpu) builds and imports the app.

Off by default: its dependency layer downloads tensorflow[and-cuda] (several GB of CUDA and
cuDNN wheels). Enable with CRYPTO_ML_GPU_IMAGE_TEST=1. No GPU is needed to build and import;
training on a GPU needs the NVIDIA container runtime and is not run here.
"""

from __future__ import annotations

import os
import time

import pytest

from . import docker_support as ds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CRYPTO_ML_GPU_IMAGE_TEST") != "1",
                       reason="the GPU image pulls several GB of CUDA wheels; set "
                              "CRYPTO_ML_GPU_IMAGE_TEST=1 to build it"),
]


def test_gpu_image_builds_and_imports_the_app(bases: ds.BaseImages) -> None:
    start = time.monotonic()
    build = ds.build_image(ds.GPU_IMAGE, bases.python, dockerfile="docker/Dockerfile.gpu",
                           timeout=3600)
    # the app is configured from the environment on first access: it needs a broker URL
    out = ds.docker("run", "--rm", "-e", "CRYPTO_ML_BROKER_URL=redis://redis:6379/0",
                    ds.GPU_IMAGE, "python", "-c",
                    "import os, crypto_ml, tensorflow as tf; crypto_ml.app; "
                    "print(os.getuid(), tf.__version__, len(tf.config.list_physical_devices('GPU')))",
                    timeout=600).stdout.split()
    assert out[0] == "10001"
    assert ds.inspect(ds.GPU_IMAGE)["Config"]["Cmd"][-2:] == ["--role", "gpu"]
    ds.record("images", {"gpu_build_seconds": round(build.seconds, 1),
                         "gpu_image_bytes": ds.image_size(ds.GPU_IMAGE),
                         "gpu_tensorflow": out[1], "gpu_devices_visible": int(out[2]),
                         "gpu_total_seconds": round(time.monotonic() - start, 1)})
