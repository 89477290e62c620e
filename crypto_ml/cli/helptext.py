"""What each subcommand's ``--help`` says besides its options: a description, two or three
examples and the exit codes (:func:`help_texts`, the keywords of ``add_parser``)."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

EXIT_CODES = {
    "send-tasks": "0 every forecast arrived; 1 some failed (the others are still printed and\n"
                  "written, each failure listed), or --output/--plot could not be written\n"
                  "after the run; 2 a usage or configuration error (unknown model or coin,\n"
                  "missing data or folder, unreachable broker), one line, before any cluster\n"
                  "starts; 130 interrupted (queued tasks revoked, or a line says they could not be;\n"
                  "its local cluster, if any, stopped;\n"
                  "--output holds the forecasts that had arrived, each other one failed as interrupted).",
    "backtest": "0 every (coin, model) scored; 1 some failed (each listed); 2 a usage or\n"
                "configuration error, one line, before any work; 130 interrupted.",
    "data": "0 every coin is up to date; 1 some coins failed (the others are written, each\n"
            "failure listed); 2 the API or the data folder cannot be used (one line);\n"
            "130 interrupted (run the same command again to resume).",
    "cluster": "0 stopped by SIGTERM (a supervisor's stop); 130 stopped by Ctrl-C (the\n"
               "cluster is stopped with it either way); 1 its Redis exited, so it stopped (one\n"
               "line; a worker or Flower that exits is said, and the rest go on); 2 it could not\n"
               "start (one line saying why).",
    "queue-depth": "0 stopped by Ctrl-C or SIGTERM; 2 no broker set, a wrong user or password,\n"
                   "a user that may not read the queues, or the port in use (one line). A broker\n"
                   "that does not answer stops nothing: each scrape gets 503 until it does.",
    "acl": "0 done; 2 a usage error (one line).",
}

TEXTS = {
    "send-tasks": (
        "Forecast every coin of the data folder (or --coins) with one or more models on\n"
        "Celery workers: those of CRYPTO_ML_BROKER_URL / --broker, else a local cluster\n"
        "started for the run. One line per forecast on stdout; progress on stderr.",
        "  crypto-ml send-tasks --coins bitcoin,ethereum --model naive,linear\n"
        "  crypto-ml send-tasks --model best --coins bitcoin --output results.json\n"
        "  crypto-ml send-tasks --model lstm --epochs 3 --format json-lines -q > out.jsonl"),
    "backtest": (
        "Walk-forward backtest: forecast from many past origins and score each model\n"
        "against what happened (MAE, RMSE, MAPE, MASE, interval coverage); tables on stdout.",
        "  crypto-ml backtest --coins bitcoin,ethereum --model naive,linear,theta\n"
        "  crypto-ml backtest --model naive,linear --max-points 100,200,all --out bt/\n"
        "  crypto-ml backtest --until 2017-06-30 --origins 10 --stride 5"),
    "data": (
        "Fetch the top N coins' daily history (OHLCV) from CryptoCompare into the data\n"
        "folder, one <Coin>.csv each; run it again to bring the files up to date.",
        "  crypto-ml data download --top 20\n"
        "  crypto-ml data download --data-dir data/ --currency EUR\n"
        "  HTTPS_PROXY=http://proxy:3128 crypto-ml data download"),
    "cluster": (
        "Run a local Redis server and Celery workers until Ctrl-C, and print the broker\n"
        "URL to export, so that several commands share one warm cluster.",
        "  crypto-ml cluster up --workers 2\n"
        "  crypto-ml cluster up --flower\n"
        "  export CRYPTO_ML_BROKER_URL='...'   # as printed; then: crypto-ml send-tasks"),
    "queue-depth": (
        "Serve each queue's depth (waiting + reserved tasks) of CRYPTO_ML_BROKER_URL as\n"
        "JSON over HTTP, for autoscalers such as KEDA.",
        "  crypto-ml queue-depth --port 9808\n"
        "  crypto-ml queue-depth --queues cpu --host 127.0.0.1"),
    "acl": (
        "The Redis ACL users of crypto-ml (manager, worker, flower, ...): print or write\n"
        "their template, make passwords, show each user's rules.",
        "  crypto-ml acl passwords >> .env\n"
        "  crypto-ml acl table"),
}


def help_texts(command: str) -> dict[str, Any]:
    """``description``, ``epilog`` (examples and exit codes) and the formatter that keeps
    their lines, for ``add_parser`` of ``command`` (or of its subcommands)."""
    description, examples = TEXTS[command]
    return {"description": description,
            "epilog": f"examples:\n{examples}\n\nexit codes:\n"
                      f"{textwrap.indent(EXIT_CODES[command], '  ')}\n",
            "formatter_class": argparse.RawDescriptionHelpFormatter}
