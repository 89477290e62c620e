#!/usr/bin/env python3
"""Entry point of worker containers, at the path their images and manifests run:

    python workers/worker.py start [--role auto|cpu|gpu] [--queues Q] [--concurrency N] [-- ARGS]
    python workers/worker.py ping [--timeout S]

The same command as ``python -m crypto_ml.worker``; the code is in crypto_ml/cli/worker.py.
"""

import sys

from crypto_ml.cli.worker import main

if __name__ == "__main__":
    sys.exit(main(prog="workers/worker.py"))
