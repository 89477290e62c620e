"""Results files written after a run (``send-tasks --output``), and where the results go
when that file cannot be written: the run's work is never lost to a full disk.

The folder of such a file is checked before the run (:func:`crypto_ml.cli.requests.check_writable`);
should writing still fail after it (a full disk, a folder removed meanwhile), the results
go to ``crypto-ml-results-<timestamp>.json`` in the current folder (else in the temporary
folder, :func:`tempfile.gettempdir`), said in one line.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from crypto_ml.cli.terminal import console


def fallback_path(now: datetime | None = None) -> Path:
    """``crypto-ml-results-<timestamp>.json`` in the current folder."""
    return Path(f"crypto-ml-results-{(now or datetime.now()):%Y%m%d-%H%M%S}.json")


def write_results(path: Path, data: dict[str, Any], option: str = "--output") -> bool:
    """Write ``data`` as JSON to ``path``: True. If that fails, write it to
    :func:`fallback_path` instead (in the current folder, else the temporary folder) and say
    so in one line: False (the run then exits 1)."""
    text = json.dumps(data, indent=2) + "\n"
    try:
        path.write_text(text)
        return True
    except OSError as exc:
        problem = exc.strerror or str(exc)
    name = fallback_path()
    tried = []
    for fallback in (name, Path(tempfile.gettempdir()) / name):
        try:
            fallback.write_text(text)
        except OSError as exc:
            tried.append(f"{fallback} ({exc.strerror or exc})")
            continue
        console.error(f"crypto-ml: error: cannot write {option} {path} ({problem}); the "
                      f"results are in {fallback.resolve()} instead")
        return False
    console.error(f"crypto-ml: error: cannot write {option} {path} ({problem}), nor "
                  f"{' nor '.join(tried)}; the results were on stdout only")
    return False
