"""The package's shape: layers that import only downwards, no cycles, small modules, one
place that reads the environment, model metadata on the models, entry points that still work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from import_graph import cycles, import_graph

PACKAGE = Path(__file__).resolve().parents[1] / "crypto_ml"
#: Each part and the parts it may import (besides itself); see each folder's __init__.
MAY_IMPORT = {
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "worker": {"core", "models"},
    "ops": {"core", "models"},
    "dispatch": {"core", "models", "data", "worker", "ops"},
    "backtest": {"core", "models", "data", "worker", "ops", "dispatch"},
    "cli": {"core", "models", "data", "worker", "ops", "dispatch", "backtest"},
    "api": {"core", "models", "data", "worker", "ops", "dispatch"},
}
#: Thin aliases and the package root: entry points above every layer.
#: (``python -m crypto_ml.data`` and ``python -m crypto_ml.worker`` exec the commands above
#: their layers: they import nothing, so they are no exception.)
ALIASES = {"crypto_ml", "crypto_ml.__main__", "crypto_ml.manager", "crypto_ml.data_loader",
           "crypto_ml.api.__main__"}
#: The only modules that read the environment's settings (entry points).
READS_ENVIRONMENT = {"crypto_ml", "crypto_ml.core.settings", "crypto_ml.worker.app", "crypto_ml.manager",
                     "crypto_ml.data_loader"}


def part(module: str) -> str:
    return module.split(".")[1]


GRAPH = import_graph(PACKAGE)


def test_the_import_graph_has_no_cycles() -> None:
    assert cycles(GRAPH) == []


def test_each_part_imports_only_the_parts_below_it() -> None:
    assert set(MAY_IMPORT) | {"manager", "data_loader", "__main__"} == {
        part(m) for m in GRAPH if m != "crypto_ml"}
    wrong = [f"{m} imports {t}" for m, targets in GRAPH.items() if m not in ALIASES
             for t in targets if part(t) != part(m) and part(t) not in MAY_IMPORT[part(m)]]
    assert wrong == []


def _modules() -> list[tuple[str, ast.Module, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found.append((name.removesuffix(".__init__"), ast.parse(text), text.count("\n")))
    return found


def test_no_module_is_over_400_lines() -> None:
    assert [(name, n) for name, _, n in _modules() if n > 400] == []


#: The only function-level imports of our own modules, each lazy on purpose: the loader's
#: pandas-based parsers (a warm cache serves coins without pandas, a second of every start).
LAZY_OWN_IMPORTS = {"crypto_ml.data.loader._discover: crypto_ml.data.layouts",
                    "crypto_ml.data.loader._read: crypto_ml.data.parsing",
                    # table runs' readers and writers (pyarrow, pandas: 0.2 s of every start)
                    "crypto_ml.cli.send.send_tasks: crypto_ml.cli.table",
                    "crypto_ml.cli.backtest.backtest_main: crypto_ml.cli.table",
                    "crypto_ml.dispatch.manager.run_table: crypto_ml.dispatch.table_run",
                    # pydantic, for a saved backtest's file alone (0.1 s of every start)
                    "crypto_ml.backtest.best.load_saved: crypto_ml.backtest.saved",
                    # the command's start: a Ctrl-C while the command line imports is one line
                    "crypto_ml.__main__.start: crypto_ml.cli"}


def test_crypto_ml_is_imported_at_module_level_only() -> None:
    """No import of our own modules hides inside a function (where it could hide a cycle);
    the exceptions are the package root's lazy ``crypto_ml.app`` and LAZY_OWN_IMPORTS."""
    inside = []
    for name, tree, _ in _modules():
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(func):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                            "crypto_ml") and name != "crypto_ml":
                        inside.append(f"{name}.{func.name}: {node.module}")
    assert sorted(set(inside) - LAZY_OWN_IMPORTS) == []


def test_only_entry_points_read_the_environment() -> None:
    readers = set()
    for name, tree, _ in _modules():
        for node in ast.walk(tree):
            called = node.func if isinstance(node, ast.Call) else None
            label = (called.attr if isinstance(called, ast.Attribute)
                     else called.id if isinstance(called, ast.Name) else "")
            if label in ("get_settings", "from_env"):
                readers.add(name)
    assert {r for r in readers if not r.startswith("crypto_ml.cli")} <= READS_ENVIRONMENT


def test_every_part_says_what_it_owns_and_may_import() -> None:
    for name in MAY_IMPORT:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert "May import" in doc or "may import" in doc, name


@pytest.mark.parametrize("code", [
    "from crypto_ml.data_loader import CryptoLoader",
    "from crypto_ml.manager import CryptoManager",
    "from crypto_ml.models import get_model",
    "import crypto_ml; assert crypto_ml.__version__",
])
@pytest.mark.integration  # runs a command in a subprocess
def test_the_historical_imports_still_work(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("command", [
    ["-m", "crypto_ml.manager", "send-tasks", "--help"],
    ["-m", "crypto_ml.manager", "backtest", "--help"],
    ["-m", "crypto_ml", "queue-depth", "--help"],
    ["-m", "crypto_ml", "cluster", "up", "--help"],
    ["-m", "crypto_ml.data", "download", "--help"],
    ["-m", "crypto_ml.worker", "start", "--help"],
])
@pytest.mark.integration  # runs a command in a subprocess
def test_the_command_lines_still_answer(command: list[str]) -> None:
    out = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr


def test_our_redis_key_prefixes_are_named_in_one_module() -> None:
    # core/keys.py names each one; the code (not docstrings) elsewhere builds keys from it
    literals = {name: sorted({node.value for node in ast.walk(tree)
                              if isinstance(node, ast.Constant) and isinstance(node.value, str)
                              and node.value.startswith("crypto_ml:")
                              and " " not in node.value})
                for name, tree, _ in _modules() if name != "crypto_ml.core.keys"}
    assert {name: found for name, found in literals.items() if found} == {}
