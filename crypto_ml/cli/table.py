"""``send-tasks --input TABLE --output OUT.parquet``: a table run from the command line.

The table is checked first (exit 2 with one line on a bad table or output, before
any cluster starts), then its series are forecast into OUT in chunks
(:mod:`crypto_ml.dispatch.table_run`). stdout stays empty: a table run can hold a
million series. stderr has the progress bar (series/s and ETA; a few plain lines
when it is not a terminal, none with ``-q``) and the summary. Exit codes: 0 every
series written; 1 some forecasts failed (listed in ``OUT.failures.parquet``) or some
chunks did not come back (run the same command again: it resumes); 2 bad input.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from crypto_ml.cli.options import EXIT_FAILED, EXIT_OK, stop_on_signals
from crypto_ml.cli.requests import SendRequest, TableRequest
from crypto_ml.cli.terminal import console, console_writer, flower_option, seconds_since_start
from crypto_ml.core.progress import ProgressBar, is_terminal
from crypto_ml.data.table import Columns, TableSource
from crypto_ml.data.table_loader import TableLoader
from crypto_ml.dispatch.manager import CLI_HINT, CryptoManager
from crypto_ml.dispatch.table_output import (
    TableOutput,
    check_apart,
    failures_path,
    first_failures,
    held,
)
from crypto_ml.dispatch.table_run import TablePlan, TableSummary


class TableProgress(ProgressBar):
    """Series finished of the total on stderr: a bar on a terminal, a line per quarter
    elsewhere, nothing with ``-q``. The rate counts this run's series, not those an earlier
    run wrote (they are skipped in a moment and would make the ETA a promise)."""

    def __init__(self, total: int, quiet: bool) -> None:
        super().__init__(sys.stderr, tty=is_terminal(sys.stderr) and not quiet, unit="series")
        self.total = total  # off a terminal its lines go to a logger that -q silences

    def __call__(self, done: int, failed: int) -> None:
        """A chunk back: ``done`` series written, ``failed`` of them with a failed forecast;
        or a chunk that did not come back: none done, all ``failed``."""
        self.add(done - failed if done else 0, failed)

    def skip(self, series: int, failed: int) -> None:
        """Series an earlier run wrote (``failed`` of them failed): counted, not in the rate."""
        self.skipped += series
        self(series, failed)

    def counts(self) -> str:
        return f"{super().counts()}, {self.rate():.0f} series/s"


def table_source(table: TableRequest, coins: Sequence[str] | None) -> TableSource:
    """The checked ``--input`` table, its series limited to ``coins`` (exact ids; None:
    every series); InvalidTable (exit 2) names what is wrong."""
    source = TableSource(table.path, Columns(**table.columns), list(coins) if coins else None)
    source.check()
    return source


def return_freed_memory() -> None:
    """Let freed buffers go back to the system: Arrow allocates with malloc (its own pool
    keeps what it freed), and glibc maps every block over 1 MiB on its own (by default it
    raises that bar after a large free, and a chunk's buffers then stay in the heap)."""
    pa.set_memory_pool(pa.system_memory_pool())
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its own rules
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def table_loader(table: TableRequest, coins: Sequence[str] | None,
                 until: str | None = None) -> TableLoader:
    """``backtest --input``: the checked table as a loader of its series (none after
    ``until``, an ISO date)."""
    return TableLoader(table_source(table, coins), until)


def send_table(request: SendRequest, table: TableRequest) -> int:
    """Check the table (OUT was checked with the arguments), forecast into OUT, summarize."""
    return_freed_memory()
    assert request.output is not None  # send_request requires it
    wanted = request.forecasts
    source = table_source(table, request.coins)
    plan = TablePlan.of(list(wanted.models), wanted.horizon, wanted.levels, wanted.max_points,
                        {} if wanted.epochs is None else {"epochs": wanted.epochs},
                        table.chunk_series, table.fallback)
    run = plan.describe(source)
    check_apart(request.output, run["input"])  # before the lock file goes beside OUT
    with held(request.output):  # one run at a time writes OUT
        output = TableOutput(request.output, run, table.overwrite)
        assert source.info is not None
        progress = TableProgress(source.info.series, quiet=request.stderr.quiet)
        manager = CryptoManager(settings=request.settings, err=console_writer(), hint=CLI_HINT,
                                cluster_options=flower_option(request.flower,
                                                              request.settings))
        stop_on_signals(manager)
        try:
            summary = manager.run_table(source, output, plan, progress, wanted.timeout,
                                        table.in_flight, on_skip=progress.skip)
        finally:
            progress.close()
    say_summary(summary, request.output, table.overwrite)
    return EXIT_OK if not summary.failures and not summary.chunks_failed else EXIT_FAILED


#: Failures of a table run said on stderr (the others are in OUT.failures.parquet alone)
SHOWN_FAILURES = 5


def say_summary(summary: TableSummary, out: Path, overwrite: bool = False) -> None:
    if summary.already_complete:
        console.info(f"summary: {out} already holds this run ({summary.series} series); "
                     "nothing to do (--overwrite to compute it again)")
        if summary.failures:  # the exit code says so again, as the run that wrote it did
            console.warning(f"{failures_path(out)} lists {summary.failures} failed "
                            "forecast(s)")
        return
    seconds = seconds_since_start()
    rate = summary.done / seconds if seconds else 0.0
    resumed = f", {summary.skipped} written by an earlier run" if summary.skipped else ""
    console.info(f"summary: {summary.series} series, {summary.done} forecast now{resumed}, "
                 f"in {seconds:.1f} s ({rate:.0f} series/s, reading and writing included)")
    if summary.chunks_failed:
        first = next(iter(summary.chunks_failed.values()))
        again = " without --overwrite" if overwrite else ""  # with it, all would start afresh
        advice = (f"run the same command again{again} to retry them" if summary.retry_helps()
                  else "fix the command: run again as it is, it fails the same way")
        console.warning(f"failed: {len(summary.chunks_failed)} chunk(s) did not come back "
                        f"({first}); {advice}")
        return
    filled = f", {summary.filled} filled by the fallback model" if summary.filled else ""
    shown = first_failures(out, SHOWN_FAILURES) if summary.failures else []
    for uid, model, error in shown:  # failures are said even with -q, as a folder run's are
        console.warning(f"failed: {uid} {model}: {error}")
    rest = (f"; {summary.failures - len(shown)} more listed there"
            if shown and summary.failures > len(shown) else "")
    wrote = (f"wrote {out} and {failures_path(out)} ({summary.failures} failed forecast(s)"
             f"{filled}{rest})")
    (console.warning if summary.failures else console.info)(wrote)
