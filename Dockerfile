# syntax=docker/dockerfile:1
# crypto-ml CPU image: workers (CPU pool), manager jobs, Flower, the queue-depth exporter.
#   docker build -t crypto-ml:0.1.0 .
# The GPU worker image is docker/Dockerfile.gpu. No data set is baked in: the
# manager reads CRYPTO_ML_DATA_DIR (/data), mounted at run time.

# Python 3.11 slim (Debian bookworm), pinned by version and by digest.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone (a stub package stands in for the
# source), so editing the code does not reinstall TensorFlow.
COPY pyproject.toml ./
RUN mkdir crypto_ml \
    && touch crypto_ml/__init__.py README.md \
    && pip install --no-cache-dir . \
    && pip uninstall --yes crypto-ml
COPY crypto_ml ./crypto_ml
RUN pip install --no-cache-dir --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    KERAS_HOME=/tmp/.keras \
    CRYPTO_ML_DATA_DIR=/data
RUN groupadd --system --gid 10001 crypto \
    && useradd --system --uid 10001 --gid crypto --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin crypto \
    && mkdir -p /data /results \
    && chown crypto:crypto /results
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY workers ./workers
COPY manager ./manager
COPY docker/probe.py ./docker/probe.py
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=40s --start-period=60s --retries=3 \
    CMD ["python", "workers/worker.py", "ping"]
CMD ["python", "workers/worker.py", "start"]
