#!/usr/bin/env bash
# The backtests behind the results in docs/models.md. From the repository root:
#   CRYPTO_ML_DATA_DIR=../shared/data/top100-2017 bash bench/quality_backtests.sh [cheap|windows|deep]...
# Each writes its tables (stdout) and files (--out) under bench/results/quality/.
set -euo pipefail
OUT=bench/results/quality
PY=${PYTHON:-.venv/bin/python}
TOP10=bitcoin,ethereum,ripple,dash,litecoin,nem,iota,monero,ethereum_classic,neo
mkdir -p "$OUT"
for what in "${@:-cheap windows deep}"; do
  for step in $what; do
    case $step in
      cheap)    # all coins with enough history, 30 origins, horizon 10, each model's default window
        "$PY" -m crypto_ml.manager backtest --model naive,linear,ets,theta,arima \
          --out "$OUT/cheap" > "$OUT/cheap.txt" ;;
      windows)  # which history window serves each cheap model best (5 origins 6 days apart)
        "$PY" -m crypto_ml.manager backtest --model naive,linear,ets,theta,arima \
          --max-points 100,200,all --origins 5 --stride 6 --out "$OUT/windows" > "$OUT/windows.txt" ;;
      deep)     # deep models on the 10-coin subset, the same held-out window as before; reduced
                # for 2 shared cores: the newest 200 closes only (the whole-history point scores
                # are the README's earlier run) and one network per ensemble (members=1)
        "$PY" -m crypto_ml.manager backtest --model naive,ets,lstm,gru,lstm_ret,gru_ret \
          --coins "$TOP10" --origins 5 --stride 6 --max-points 200 --param members=1 \
          --out "$OUT/deep" > "$OUT/deep.txt" ;;
      *) echo "unknown step $step" >&2; exit 2 ;;
    esac
  done
done
