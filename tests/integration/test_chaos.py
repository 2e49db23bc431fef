"""A short chaos run in the suite: workers and the server killed while jobs run.

The long run is ``bench/chaos.py``; both are ``chaos.run``.
"""

from __future__ import annotations

import pytest
from chaos import run

pytestmark = pytest.mark.timeout(600)


def test_nothing_is_lost_and_no_job_runs_twice_at_once(tmp_path):
    report = run(tmp_path, jobs=60, workers=2, slots=2, job_s=(0.2, 1.0),
                 worker_kill_every=(3.0, 5.0), server_kills=1, seed=7)  # fmt: skip
    print(report.summary())
    assert report.worker_kills >= 1 and report.server_kills == 1
    assert report.jobs == 60
    assert not report.lost, report.summary()
    assert not report.overlaps, report.summary()
    # A worker's jobs are requeued when the scheduler drops it, not at their lease's end (20 s).
    assert all(d < 15 for d in report.requeue_delays), report.requeue_delays
