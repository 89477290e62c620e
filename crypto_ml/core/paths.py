"""Whether a file can be made in a folder: tried, not read from its permissions (root writes
where they say no; ``/proc`` and a read-only mount refuse whatever they say)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def write_problem(folder: Path) -> tuple[Path, str] | None:
    """Where no file can be made, and why: ``folder``, or, while it is missing, the nearest
    folder above it that is there (which would hold it once made); None when one can."""
    there = folder
    while not there.exists() and there != there.parent:
        there = there.parent
    try:
        if not there.is_dir():
            raise NotADirectoryError(f"{there} is not a folder")
        tempfile.TemporaryFile(dir=there).close()
    except OSError as exc:
        return there, str(exc.strerror or exc)
    return None
