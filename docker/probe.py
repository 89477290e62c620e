#!/usr/bin/env python3
"""Health check for HTTP services in the image (the slim base has no curl).

    python docker/probe.py URL [--timeout S]

Exits 0 when ``GET URL`` answers 200, else 1 with one line saying why. The
compose file's ``flower`` service uses it on Flower's ``/healthcheck`` page.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker/probe.py",
                                     description="Exit 0 when GET URL answers HTTP 200.")
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (5)")
    args = parser.parse_args(argv)
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"probe: {args.url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"probe: {args.url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
