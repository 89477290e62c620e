# syntax=docker/dockerfile:1
# crypto-ml CPU image: workers (CPU pool), manager jobs, Flower, the queue-depth exporter.
#   docker build -t crypto-ml:0.1.0 .
# The GPU worker image is docker/Dockerfile.gpu. No data set is baked in: the
# manager reads CRYPTO_ML_DATA_DIR (/data), mounted at run time.

# Python 3.11 slim (Debian bookworm), pinned by version and by digest.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# The requirement list, read from pyproject.toml: the dependency layer below is rebuilt
# only when this list changes, not when other parts of pyproject.toml or the code do.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], sep=chr(10))" > requirements.txt

# The dependencies in /opt/venv, the base of the runtime stage. Its cache key is
# the requirement list and this command, so editing the code (or the rest of pyproject.toml)
# never reinstalls them, and no multi-GB venv is copied between stages. (No stub package:
# its empty __init__.py would survive the real install in site-packages.)
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=requirements /src/requirements.txt /opt/requirements.txt
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -r /opt/requirements.txt

# The package itself, as a wheel for the runtime stage: a source edit rebuilds small layers.
FROM deps AS build
WORKDIR /src
COPY pyproject.toml ./
COPY crypto_ml ./crypto_ml
RUN touch README.md \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM deps AS runtime
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
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps --no-index /wheels/*.whl \
    && rm -rf /wheels
WORKDIR /app
COPY workers ./workers
COPY manager ./manager
COPY docker/probe.py ./docker/probe.py
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=40s --start-period=60s --retries=3 \
    CMD ["python", "workers/worker.py", "ping"]
CMD ["python", "workers/worker.py", "start"]
