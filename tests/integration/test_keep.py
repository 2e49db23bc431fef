"""A job's own keep time, through the real service: every way to submit sets it, `gc` honours it.

(The sweep's rules, the spec's refusals and --max-keep are unit tests: tests/unit/test_retention.py.)
"""

from __future__ import annotations

import subprocess
import sys
import time

import cloudpickle
import dask
import pytest
from dask import delayed

from dask_kotta import KottaScheduler
from dask_kotta.errors import NotFoundError
from kotta import KottaJob
from kotta.kotta_functions import kottajob

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: A few seconds, in days.
KEEP = 2 / 86400


def inc(x):
    return x + 1


def test_jobs_kept_a_few_seconds_are_gone_after_gc_and_no_others(service, konn, tmp_path):
    short: dict[str, str] = {}  # how it was submitted -> job id

    job = KottaJob(script="echo x > x.txt", outputs="x.txt", walltime=0.5, keep_days=KEEP)
    job.submit(konn)
    short["KottaJob"] = job.job_id

    @kottajob(konn, "Test", 0.5, block=False, keep_days=KEEP)
    def decorated(x):
        return x + 1

    future = decorated(1)
    assert future.get_results(konn) == 2
    short["@kottajob"] = future.job_id

    (many,) = konn.submit_many([(inc, (1,))], walltime=0.5, keep_days=KEEP)
    short["submit_many"] = many.job_id

    script = tmp_path / "job.sh"
    script.write_text("echo from-cli\n")
    out = service.cli("submit", str(script), "-w", "0.5", "--keep", f"{KEEP!r}", check=True)
    short["dask-kotta submit"] = out.stdout.strip()

    sched = KottaScheduler(konn, walltime=0.5)
    with dask.annotate(keep_days=KEEP):
        x = delayed(inc)(1, dask_key_name="kept-briefly")
    assert x.compute(scheduler=sched) == 2
    (short["dask.annotate"],) = sched.last_run.job_ids

    forever = KottaJob(script="echo y", walltime=0.5, keep_days=0)
    default = KottaJob(script="echo z", walltime=0.5)
    konn.submit_many([forever, default])

    jobs = {how: KottaJob.attach(konn, jid) for how, jid in short.items()}
    for j in [*jobs.values(), forever, default]:
        assert j.wait(konn, maxwait=120) and j.status(konn) == "completed", j.info
    for how, j in jobs.items():
        assert j.info["keep_days"] == pytest.approx(KEEP), how
    assert (forever.info["keep_days"], default.info["keep_days"]) == (0, None)
    assert "kept       for ever" in service.cli("status", forever.job_id, check=True).stdout

    ended = max(j.info["ended_at"] for j in jobs.values())
    time.sleep(max(0.0, ended + KEEP * 86400 + 0.5 - time.time()))
    gc = subprocess.run(
        [sys.executable, "-m", "dask_kotta.cli", "gc", "--data-dir", str(service.data_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gc.returncode == 0, gc.stderr
    assert f"deleted {len(short)} job(s)" in gc.stdout, gc.stdout
    objects = service.data_dir / "objects"
    for how, jid in short.items():
        with pytest.raises(NotFoundError):
            konn.job(jid)
        assert not list(objects.glob(f"u*/{jid}")), f"{how}: its files are gone too"
        assert service.stored(jid) == set(), f"{how}: its objects are gone too"
    assert konn.job(forever.job_id)["status"] == "completed"
    assert konn.job(default.job_id)["status"] == "completed"
    assert "STDOUT.txt" in service.stored(default.job_id)
