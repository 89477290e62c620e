"""The documentation: README.md and the site under docs/ (mkdocs.yml).

The site builds in strict mode (any warning fails it: a broken link or anchor, a page left out
of the nav, a generated page that is not current); the generated pages (docs/cli.md,
docs/openapi.json, docs/api-reference.md) are what docs/gen.py makes from the code now; and
every file path, module and CRYPTO_ML_ variable that the README and the pages name exists.

What counts as a file path: a token of a code span or code block (or a link target) whose first
segment is one of the repository's top-level entries (REPO_TOP), e.g. ``tests/test_chaos.py``,
``k8s/base/redis.yaml``. Skipped: URLs (``://``), absolute paths (container paths such as
``/data``), and placeholders (``<id>``, ``{json,md}``, ``$VAR``, ``...``). A glob
(``tests/test_deploy_*.py``) must match at least one file. Paths that a user or a command makes,
never in git, are listed in MADE_AT_RUN_TIME with the reason. A module is any dotted name under
``crypto_ml.`` or ``bench.``: its longest module prefix must be a file or package, and the next
name must be defined there (or, like a Celery task name, be a string in the package's source).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_BYTES = 12 * 1024

#: The repository's top-level entries: a token starting with one of these is a repository path.
REPO_TOP = {".ci", "bench", "crypto_ml", "data", "docker", "docs", "k8s", "manager", "tests",
            "workers", "Dockerfile", "docker-compose.yml", "mkdocs.yml", "pyproject.toml",
            "README.md"}

#: Paths the docs name that are made by a user or a command, never committed (.gitignore).
MADE_AT_RUN_TIME = {
    "data/crypto": "the default data folder: the user's own CSV files",
    "k8s/base/secrets.env": "the deployment's passwords (crypto-ml acl passwords > ...)",
}

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.M | re.S)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE = re.compile(r"(?<![\w./-])((?:crypto_ml|bench)(?:\.[A-Za-z_]\w*)+)")
ENV_VAR = re.compile(r"\bCRYPTO_ML_[A-Z0-9_]*[A-Z0-9]\b")
SPLIT = re.compile(r"[\s,;()\[\]'\"=`|]+")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _code(text: str) -> list[str]:
    """The code blocks' contents and the inline code spans outside them."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return blocks + [m.group(2) for m in INLINE.finditer(prose)]


def _links(text: str) -> list[str]:
    prose = INLINE.sub("", FENCE.sub("", text))
    return [m.group(1) for m in LINK.finditer(prose)]


def _path_tokens(page: Path) -> set[str]:
    text = _text(page)
    tokens = set()
    for code in _code(text):
        tokens.update(SPLIT.split(code))
    base = "" if page == README else "docs/"
    tokens.update(base + link.split("#")[0] for link in _links(text)
                  if "://" not in link and not link.startswith(("#", "mailto:")))
    paths = set()
    for token in tokens:
        token = token.split("::")[0].rstrip(".:")  # pytest node ids; end of a sentence
        token = token.removeprefix("./")
        if not token or "://" in token or token.split("/")[0] not in REPO_TOP:
            continue
        if any(mark in token for mark in ("<", ">", "{", "}", "$", "...")):
            continue  # a placeholder
        paths.add(token)
    return paths


def _missing_path(path: str) -> bool:
    if path.rstrip("/") in MADE_AT_RUN_TIME:
        return False
    if any(mark in path for mark in "*?"):
        return not any(ROOT.glob(path))
    return not (ROOT / path).exists()


def test_paths_named_in_the_readme_and_the_docs_exist() -> None:
    missing = {f"{page.relative_to(ROOT)}: {path}"
               for page in PAGES for path in _path_tokens(page) if _missing_path(path)}
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(sorted(missing))


def test_the_rules_entries_exist() -> None:
    assert all((ROOT / name).exists() for name in REPO_TOP), REPO_TOP
    assert {"crypto_ml/worker/liveness.py", "tests/test_chaos.py", "k8s/base/network-policies.yaml",
            "tests/test_reliability_*.py"} <= set().union(*map(_path_tokens, PAGES))


@cache
def _package_strings() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "crypto_ml").rglob("*.py"))


def _defines(source: str, name: str) -> bool:
    return bool(re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^\s*{name}\s*[:=]"
                          rf"|^\s*(?:from\s+\S+\s+)?import\b[^\n]*\b{name}\b|[\"']{name}[\"']",
                          source, re.M))


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        for module in (base.with_suffix(".py"), base / "__init__.py"):
            if module.is_file():
                rest = parts[i:]
                return (not rest or _defines(module.read_text(encoding="utf-8"), rest[0])
                        or f'"{dotted}"' in _package_strings())
    return False


def test_modules_named_in_the_readme_and_the_docs_exist() -> None:
    named = {(page.relative_to(ROOT), m.group(1).rstrip("."))
             for page in PAGES for m in MODULE.finditer(_text(page))}
    assert len(named) > 20  # the pattern finds them
    missing = {f"{page}: {name}" for page, name in named if not _resolves(name)}
    assert not missing, "modules named in the docs that do not exist:\n" + "\n".join(sorted(missing))


def test_environment_variables_named_in_the_docs_are_read_somewhere() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                        for folder in ("crypto_ml", "tests", "bench", "workers", "manager",
                                       "docker", "k8s", ".ci")
                        for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix != ".pyc"
                        ) + (ROOT / "docker-compose.yml").read_text() + (ROOT / "Dockerfile").read_text()
    named = {(page.relative_to(ROOT), v) for page in PAGES for v in ENV_VAR.findall(_text(page))}
    unknown = {f"{page}: {var}" for page, var in named if var not in sources}
    assert not unknown, "variables the docs name that nothing reads:\n" + "\n".join(sorted(unknown))


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location("crypto_ml_docs_gen", DOCS / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_what_the_code_makes_now() -> None:
    stale = _gen().stale()
    assert not stale, f"{stale} not current: run .venv/bin/python docs/gen.py and commit them"


def test_readme_is_short_and_its_test_command_is_what_ci_runs() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; at most {README_MAX_BYTES}"
    text = _text(README)
    assert text.startswith("# crypto-ml\n")
    test_command = ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' "
                    "&& .venv/bin/python -m pytest")
    assert f"```bash\n{test_command}\n```" in text
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m crypto_ml.manager send-tasks" in text


def _readme_doc_links() -> list[tuple[str, str]]:
    """(page under docs/, anchor or '') for each README link into the docs."""
    out = []
    for link in _links(_text(README)):
        page, _, anchor = link.partition("#")
        if page.startswith("docs/") and page.endswith(".md"):
            out.append((page.removeprefix("docs/"), anchor))
    return out


@pytest.mark.integration  # mkdocs in a subprocess
def test_site_builds_in_strict_mode_and_the_readme_links_land(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about its end of life
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    assert (site / "openapi.json").is_file() and not (site / "gen.py").exists()
    links = _readme_doc_links()
    assert len(links) > 10 and ("operations.md", "the-nemesis-faults-together-at-scale") in links
    for page, anchor in links:
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), f"README links to docs/{page}, which is not a page of the site"
        if anchor:
            assert f'id="{anchor}"' in html.read_text(encoding="utf-8"), \
                f"README links to docs/{page}#{anchor}: no such anchor there"
