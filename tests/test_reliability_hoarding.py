"""No hoarding: a worker never holds more messages than it has pool processes, however long
it lives, and a worker started mid-backlog gets a fair share of what is left.

Real Redis, real workers; the experiment itself is tests/hoarding.py (run it by hand with
``--before`` to see the configuration of before issue 12).
"""

from __future__ import annotations

import pytest
from fault_helpers import FAST_LIVENESS
from hoarding import experiment

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_thousands_of_tasks_with_faults_never_hoarded_and_shared_with_a_new_worker() -> None:
    # fast liveness (dead after 3 s): the orphan below comes back after 6 s, not 20
    report = experiment(2000, liveness=FAST_LIVENESS)
    dead_after = float(FAST_LIVENESS["CRYPTO_ML_DEAD_AFTER_SECONDS"])
    print(report)
    assert report["failed"] == report["messages"] // 50  # the bad-input ones, no others
    # at every sample (every few ms): each worker held at most its one pool process's task
    # (nothing reserved beyond what runs), and the exporter counted waiting + unacked
    assert report["violations"] == [], report
    assert set(report["max_held"].values()) == {1}, report
    # a message held by nobody (a reject lost in the broker restart) was back within the
    # sweeper's orphan bound (2 x the dead-after time, plus a sweep), not the visibility timeout
    assert report["max_unheld_seconds"] < 2 * dead_after + 5, report
    # no drift of the prefetch window, even after a killed pool process and rejections
    assert set(report["prefetch_count_at_end"].values()) == {1}, report
    assert report["remaining_at_join"] > 200, "the backlog was gone before the 2nd worker came"
    assert report["second_share"] >= 0.4, report
