"""Shared test fixtures: the price data, a real local cluster, the CLI as a user runs it.

``price_data`` is a small set the tests write (tests/sample_data.py), so every
integration test runs in a fresh clone. ``real_data`` is the real top-100 set, for the
few tests of its own quirks: ``CRYPTO_ML_DATA_DIR``, else ``../shared/data/top100-2017``
beside the clone; without it those tests are skipped and the run's last lines say so.
"""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from leftovers import mark_session, reap
from s3_support import s3_endpoint  # noqa: F401 - a fixture for every module that needs S3
from sample_data import make_price_data

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CRYPTO_ML_DATA_DIR")
                 or ROOT.parent / "shared" / "data" / "top100-2017")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SESSION_MARK = pytest.StashKey[str]()
#: Markers of the second tier: deselected unless ``-m`` names them.
SECOND_TIER = ("slow", "nemesis")
NO_REAL_DATA = (f"the real data set is not at {REAL_DATA} (set CRYPTO_ML_DATA_DIR to the "
                "top100-2017 folder)")


@pytest.fixture(scope="session")
def price_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small price data set in the real set's layout and format, made for this run."""
    return make_price_data(tmp_path_factory.mktemp("price-data"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real top-100 data set, or a skip saying where it was looked for."""
    if not (REAL_DATA / "Bitcoin.csv").is_file():
        pytest.skip(NO_REAL_DATA)
    return REAL_DATA


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """A real Redis server and two real `celery -A crypto_ml worker` processes."""
    from crypto_ml.dispatch.cluster import LocalCluster

    with LocalCluster(workers=2) as running:
        yield running


def cli_env(data_dir: Path | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without its CRYPTO_ML_ settings, plus ``data_dir`` and ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    if data_dir is not None:
        full_env["CRYPTO_ML_DATA_DIR"] = str(data_dir)
    return {**full_env, **(env or {})}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m crypto_ml.manager ARGS`` in a subprocess, as a user would."""
    full_env = cli_env(data_dir, env)
    return subprocess.run([sys.executable, "-m", "crypto_ml.manager", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def hangups_heard() -> Iterator[None]:
    """SIGHUP at its default while the block starts processes: a test run under ``nohup``
    (which ignores it, and children inherit that) can still test what a hang-up does."""
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, before)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SESSION_MARK] = mark_session()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process the tests started outlives them (tests/leftovers.py)."""
    mark = session.config.stash.get(SESSION_MARK, None)
    left = reap(mark) if mark else []
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"{len(left)} process(es) outlived the tests (killed now):",
                                red=True)
            for line in left:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _tiers(item: pytest.Item) -> set[str]:
    """The markers that select ``item`` into a tier: ``-m`` naming any of them runs it."""
    found = {m for m in (*SECOND_TIER, "container") if item.get_closest_marker(m)}
    return found | ({"container"} if "container" in item.path.parts else set())


def _second_tier(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(tier) for tier in SECOND_TIER)


def _named_by_id(item: pytest.Item, config: pytest.Config) -> bool:
    """Whether the command line names ``item`` (or its class) by id, from wherever it runs."""
    here = config.invocation_params.dir
    for arg in config.args:
        path, sep, rest = arg.partition("::")
        if sep and (here / path).resolve() == item.path and \
                item.nodeid.partition("::")[2].startswith(rest):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the second tier (marked ``slow`` or ``nemesis``: the long fault and load tests)
    run only when ``-m`` names one of their tiers (``container`` too, for the container tier's
    slow tests) or the command line names them by id (.ci/run runs
    them after the suite, with the container tier); tests marked ``gpu`` are skipped, with
    the reason, without an NVIDIA GPU."""
    named = config.option.markexpr or ""
    held = [item for item in items
            if _second_tier(item) and not any(tier in named for tier in _tiers(item))
            and not _named_by_id(item, config)]
    if held:
        config.hook.pytest_deselected(items=held)
        items[:] = [item for item in items if item not in held]
    if shutil.which("nvidia-smi"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi not found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The run's last lines: how many tests were skipped, and why, so a green run hides none."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.write_sep("-", f"{len(skipped)} skipped")
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{count} skipped: {reason}")


def on_a_terminal(args: list[str], data_dir: Path,
                  extra_env: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Run ``python -m crypto_ml.manager ARGS`` with stderr on a pseudo-terminal, as a user at a
    terminal would: (stdout, what the terminal got, exit code). The terminal is an xterm
    unless ``extra_env`` says otherwise (a dumb one gets no bar: TERM=dumb)."""
    leader, follower = pty.openpty()
    env = cli_env(data_dir, {"TERM": "xterm", **(extra_env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "crypto_ml.manager", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    stdout = proc.stdout.read() if proc.stdout else ""
    return stdout, b"".join(chunks).decode(), proc.wait(timeout=60)


def shown_lines(screen: str) -> list[str]:
    """What a terminal shows after ``screen`` was written to it: on each line, what follows a
    carriage return overwrites the line from its start (so a bar redrawn in place leaves its
    last drawing, and a cleared one blanks), trailing blanks dropped."""
    shown = []
    for written in screen.split("\n"):
        cells: list[str] = []
        column = 0
        for char in written:
            if char == "\r":
                column = 0
                continue
            cells[column:column + 1] = [char]
            column += 1
        shown.append("".join(cells).rstrip())
    return shown


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, profile: Path, *extra: str, budget_ms: int = 15000
           ) -> subprocess.CompletedProcess[str]:
    """Open ``url`` in headless Chromium (a fresh profile, no background traffic)."""
    assert CHROMIUM
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           f"--virtual-time-budget={budget_ms}", *extra, url]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run
