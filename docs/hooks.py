"""MkDocs hook (mkdocs.yml ``hooks:``): a build warns, so a strict build fails, when a page that
``docs/gen.py`` generates (the CLI reference, the OpenAPI description and its page) is not
what the code makes now. It writes nothing: ``.venv/bin/python docs/gen.py`` does."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.crypto_ml")  # under "mkdocs": counted by --strict


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location("crypto_ml_docs_gen", Path(__file__).with_name("gen.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_pre_build(config: Any) -> None:
    for name in _gen().stale():
        log.warning("%s is not what the code makes now: run .venv/bin/python docs/gen.py", name)
