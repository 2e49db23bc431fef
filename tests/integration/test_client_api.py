"""The documented client API against a real service: KottaJob, KOut, @kottajob.

Every test that takes ``konn`` runs on both object stores: the session's service (a
local directory) and one whose store is an S3 bucket (SeaweedFS), started for this module.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kotta_testing import Service

from dask_kotta import defaults as d
from dask_kotta.errors import (
    JobCancelledError,
    JobFailedError,
    KottaError,
    RemoteError,
    ResultError,
    SerializationError,
)
from kotta import Kotta, KottaJob
from kotta.kotta_functions import *  # noqa: F403

QUEUES = Path(__file__).with_name("queues.json")


@pytest.fixture(scope="module")
def s3_store_service(s3_server, tmp_path_factory):
    """`up` as the session's service is, its object store a bucket instead of a directory."""
    extra = ["--queues", str(QUEUES), "--max-payload", "32MiB", "--store", "s3://kotta-api/jobs"]
    base = tmp_path_factory.mktemp("s3-store")
    with Service(base, extra=extra, env=s3_server.env).start() as svc:
        yield svc


@pytest.fixture(scope="module", params=["local-store", "s3-store"])
def konn(request):
    if request.param == "local-store":
        return request.getfixturevalue("service").konn()
    return request.getfixturevalue("s3_store_service").konn()


def wait_status(konn, job, statuses, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.status(konn) in statuses:
            return job.status(konn)
        time.sleep(0.1)
    raise AssertionError(f"job stayed {job.status(konn)}")


def test_kotta_functions_star_import_gives_the_documented_names():
    ns: dict = {}
    exec("from kotta.kotta_functions import *", ns)
    assert {"kottajob", "KOut"} <= set(ns)
    from kotta.kotta_job import KottaJob as K2

    assert K2 is KottaJob


def test_script_job_lifecycle_and_properties(konn):
    job = KottaJob(
        jobtype="script", jobname="props", queue="Test", walltime=0.5, script_name="run.sh",
        script="#!/bin/bash\necho out; echo err >&2; mkdir -p sub; echo 1,2 > sub/b.csv; echo x > a.csv",
        outputs="a.csv, sub/b.csv", output_file_stdout="OUT.txt", output_file_stderr="ERR.txt",
    )  # fmt: skip
    assert job.status(konn) == "unsubmitted"
    assert "unsubmitted" in repr(job)
    assert job.submit(konn) is True
    assert job.job_id in repr(job)
    assert job.wait(konn, maxwait=60) is True
    assert job.status(konn) == "completed"
    assert job.jobname == "props"
    assert job.desc["walltime"] == 0.5 and job.desc["queue"] == "Test"
    outs = {o.file: o for o in job.outputs}
    assert set(outs) == {"OUT.txt", "ERR.txt", "a.csv", "b.csv"}
    assert outs["OUT.txt"].read() == "out\n"
    assert outs["ERR.txt"].read() == "err\n"
    assert outs["b.csv"].read() == "1,2\n"
    assert job.get_results(konn) == job.outputs
    events = [e["status"] for e in konn.events(job.job_id)]
    assert events == ["pending", "staging_inputs", "processing", "staging_outputs", "completed"]
    info = job.info
    assert info["submitted_at"] <= info["started_at"] <= info["ended_at"]
    assert all(info["timings"][k] is not None for k in ("stage_in", "run", "stage_out"))


def test_kout_get_data_streams_to_file(konn, tmp_path, monkeypatch):
    job = KottaJob(script="echo data > f.txt", outputs="f.txt", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    out = next(o for o in job.outputs if o.file == "f.txt")
    monkeypatch.chdir(tmp_path)
    path = out.get_data()
    assert (tmp_path / "f.txt").read_text() == "data\n" and path == "f.txt"
    assert out.url.startswith(konn.url) and out.s3_url


def test_python_function_blocking_and_arguments(konn):
    @kottajob(konn, "Test", 0.5)
    def combine(a, b=2, *, c):
        return {"sum": a + b + c, "tuple": (a, b, c)}

    assert combine(1, c=3) == {"sum": 6, "tuple": (1, 2, 3)}


def test_python_stdout_and_stderr_are_outputs(konn):
    @kottajob(konn, "Test", 0.5, block=False)
    def noisy():
        import sys

        print("to stdout")
        print("to stderr", file=sys.stderr)
        return 7

    job = noisy()
    assert job.get_results(konn) == 7
    texts = {o.file: o.read() for o in job.outputs}
    assert texts == {"STDOUT.txt": "to stdout\n", "STDERR.txt": "to stderr\n"}


def test_remote_exception_carries_type_and_traceback(konn):
    @kottajob(konn, "Test", 0.5)
    def fails(x):
        def inner():
            raise KeyError(f"no key {x}")

        inner()

    with pytest.raises(KeyError) as info:
        fails("abc")
    err = info.value
    assert isinstance(err, RemoteError)
    assert "no key abc" in str(err)
    assert "Remote traceback" in str(err) and "in inner" in err.remote_traceback


def test_failed_job_status_and_reason(konn):
    @kottajob(konn, "Test", 0.5, block=False)
    def boom():
        raise ValueError("bad value")

    job = boom()
    job.wait(konn)
    assert job.status(konn) == "failed"
    assert job.reason == "ValueError: bad value"
    with pytest.raises(ValueError, match="bad value"):
        job.get_results(konn)


def test_unpicklable_function_fails_before_any_request(konn):
    import threading

    lock = threading.Lock()
    before = len(konn.jobs(limit=10_000))

    @kottajob(konn, "Test", 0.5)
    def uses_lock():
        return lock.locked()

    with pytest.raises(SerializationError, match="cannot pickle"):
        uses_lock()
    assert len(konn.jobs(limit=10_000)) == before


def test_a_connection_never_rides_inside_a_job(konn):
    """A function that closes over a connection (or calls a decorated function) would carry
    the user's token into the job's payload: refused on the client, before any request."""
    before = len(konn.jobs(limit=10_000))

    @kottajob(konn, "Test", 0.5)
    def inner(x):
        return x

    def outer(x):
        return inner(x) + 1  # the decorated `inner` closes over `konn`

    with pytest.raises(SerializationError, match="holds your token"):
        konn.submit_many([(outer, (1,))])
    with pytest.raises(SerializationError, match="holds your token"):
        kottajob(konn, "Test", 0.5)(outer)(1)
    assert len(konn.jobs(limit=10_000)) == before


def test_result_the_client_cannot_unpickle(konn):
    @kottajob(konn, "Test", 0.5)
    def make_foreign():
        # A class from a module that exists only in the job's working directory.
        import pathlib
        import sys

        pathlib.Path("only_on_worker.py").write_text("class Thing:\n    pass\n")
        sys.path.insert(0, ".")
        import only_on_worker

        return only_on_worker.Thing()

    with pytest.raises(ResultError, match="cannot unpickle the result of job .*only_on_worker"):
        make_foreign()


def test_walltime_fraction_and_walltime_exceeded(konn):
    @kottajob(konn, "Test", 0.02, block=False)  # 1.2 s
    def sleeper():
        import time

        time.sleep(30)

    job = sleeper()
    assert job.wait(konn, maxwait=60)
    assert job.status(konn) == "failed"
    assert job.reason.startswith("walltime exceeded: killed after its walltime of")
    with pytest.raises(JobFailedError, match="walltime exceeded"):
        job.get_results(konn)


def test_memory_limit_exceeded(konn):
    @kottajob(konn, "Tiny", 1, block=False)
    def hog():
        import time

        blocks = [bytearray(50 * 1024 * 1024) for _ in range(20)]  # 1 GB, over Tiny's 300 MiB
        time.sleep(5)
        return len(blocks)

    job = hog()
    job.wait(konn, maxwait=60)
    assert job.status(konn) == "failed"
    assert job.reason.startswith("memory limit exceeded: killed above queue Tiny")


def test_cancel_running_job_kills_it(konn, tmp_path):
    marker = tmp_path / "late"

    @kottajob(konn, "Test", 1, block=False)
    def slow(path):
        import pathlib
        import time

        time.sleep(4)
        pathlib.Path(path).write_text("should never happen")

    job = slow(str(marker))
    wait_status(konn, job, {"processing"})
    assert job.cancel(konn) is True
    assert job.status(konn) == "cancelled"
    with pytest.raises(JobCancelledError):
        job.get_results(konn)
    time.sleep(6)
    assert not marker.exists(), "the cancelled job's process kept running"
    assert job.status(konn) == "cancelled"


def test_cancel_finished_job_changes_nothing(konn):
    job = KottaJob(script="echo hi", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    assert job.cancel(konn) is False
    assert job.status(konn) == "completed"
    assert job.outputs[0].read() == "hi\n"


def test_submit_is_idempotent_with_a_key(konn):
    spec = KottaJob(script="echo once", walltime=0.5).to_spec()
    spec["idempotency_key"] = "fixed-key-123"
    first = konn.submit_specs([dict(spec)], [None])[0]
    again = konn.submit_specs([dict(spec)], [None])[0]
    assert first["id"] == again["id"]


def test_script_exit_code_fails_the_job(konn):
    job = KottaJob(script="echo before; exit 3", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "failed"
    assert job.reason == "script exited with code 3"
    assert next(o for o in job.outputs if o.file == "STDOUT.txt").read() == "before\n"


def test_missing_declared_output_fails_naming_it(konn):
    job = KottaJob(script="echo x > present.txt", outputs="present.txt, absent.csv", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "failed"
    assert "absent.csv" in job.reason
    assert "present.txt" in {o.file for o in job.outputs}


def test_output_symlink_escape_fails(konn):
    job = KottaJob(script="ln -s /etc/passwd leak.txt", outputs="leak.txt", walltime=0.5)
    job.submit(konn)
    job.wait(konn)
    assert job.status(konn) == "failed"
    assert "leak.txt" in job.reason and "outside" in job.reason
    assert "leak.txt" not in {o.file for o in job.outputs}


def test_get_results_before_submit_is_a_clear_error(konn):
    with pytest.raises(KottaError, match="not been submitted"):
        KottaJob(script="true").get_results(konn)


def test_unknown_kottajob_keyword():
    with pytest.raises(TypeError, match="scirpt"):
        KottaJob(scirpt="echo")


def test_requirements_are_recorded(konn):
    job = KottaJob(script="true", walltime=0.5, requirements="toolz\n")
    job.submit(konn)
    assert konn.job(job.job_id)["requirements"] == "toolz\n"


def test_statuses_are_the_documented_strings():
    assert set(d.SERVER_STATUSES) | {d.UNSUBMITTED} == {
        "unsubmitted", "pending", "staging_inputs", "cancelled", "completed", "failed", "processing",
        "staging_outputs",
    }  # fmt: skip


def test_connection_repr(konn):
    assert isinstance(konn, Kotta) and "tester" in repr(konn)
