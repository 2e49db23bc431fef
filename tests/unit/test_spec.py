"""The job spec: one model that the client, the Dask scheduler and the server check a job with."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from dask_kotta.client import KottaJob
from dask_kotta.errors import ConflictError, InvalidRequestError, KottaError
from dask_kotta.jobspec import JobSpec
from dask_kotta.server.queues import Queue
from dask_kotta.server.validate import check_spec

QUEUES = {"Test": Queue("Test", 2, 1 << 30, 600.0), "Tiny": Queue("Tiny", 1, 1 << 28, 10.0)}


def test_defaults_and_normalisation():
    spec = JobSpec.parse(
        {"script": "echo hi", "walltime_min": "2.5", "retries": "3", "inputs": None,
         "outputs": ["./out//a.csv"], "stdout": ""}
    )  # fmt: skip
    assert spec.jobtype == "script" and spec.queue == "Test"
    assert spec.walltime_min == 2.5 and spec.retries == 3
    assert spec.inputs == [] and spec.outputs == ["out/a.csv"]
    assert (spec.stdout, spec.stderr, spec.script_name) == ("STDOUT.txt", "STDERR.txt", "script.sh")
    # The JSON form leaves out what is null, as the server stores it.
    assert "requirements" not in spec.to_json() and "idempotency_key" not in spec.to_json()


def test_a_python_jobs_script_name_is_kept_as_given():
    assert JobSpec.parse({"jobtype": "python"}).script_name is None
    assert JobSpec.parse({"jobtype": "python", "script_name": "x"}).script_name == "x"


@pytest.mark.parametrize(
    "raw, message",
    [
        ([1], "a job description must be a JSON object"),
        ({"bogus": 1, "script": "x"}, "unknown job fields: bogus"),
        ({"jobtype": "java"}, "jobtype 'java' is not one of script, python"),
        ({"script": "x", "walltime_min": "soon"}, "walltime 'soon' is not a number of minutes"),
        ({"script": "x", "walltime_min": None}, "walltime None is not a number of minutes"),
        ({"script": "x", "walltime_min": 0}, "walltime must be > 0 minutes, got 0"),
        ({"script": "x", "inputs": "http://h/a"}, "inputs must be a list of strings"),
        ({"script": "x", "outputs": [1]}, "outputs must be a list of strings"),
        ({"script": "x", "deps": "abc"}, "deps must be a list of strings"),
        ({"script": "x", "inputs": ["ftp://h/a"]}, "unsupported scheme 'ftp'"),
        ({"script": "x", "inputs": ["not a url"]}, "unsupported scheme '(none)'"),
        ({"script": "x", "inputs": ["s3://"]}, "is malformed: it names no host or bucket"),
        ({"script": "x", "inputs": ["http://h:port/a"]}, "is malformed"),
        ({"script": "x", "inputs": ["https://u:pw@h/a"]}, "carries user-info"),
        ({"script": "x", "inputs": ["http://h/a/x.txt", "s3://b/x.txt"]},
         "inputs 'http://h/a/x.txt' and 's3://b/x.txt' would both be staged as 'x.txt'"),
        ({"script": "x", "outputs": ["../up.txt"]}, "output '../up.txt' escapes"),
        ({"script": "x", "outputs": ["/etc/passwd"]}, "output '/etc/passwd' is absolute"),
        ({"script": "x", "outputs": [".kotta/result.pkl"]}, "'.kotta/' is reserved"),
        ({"script": "x", "stdout": "../o"}, "output_file_stdout '../o' escapes"),
        ({"script": "x", "stderr": "/e"}, "output_file_stderr '/e' is absolute"),
        ({"script": "x", "script_name": "../../evil.sh"}, "script_name '../../evil.sh' escapes"),
        ({"script": "x", "retries": "x"}, "retries 'x' is not an integer"),
        ({"script": "x", "retries": 101}, "retries must be between 0 and 100"),
        ({"script": "x", "name": "n" * 257}, "name must be a string of at most 256 characters"),
        ({"script": "x", "requirements": 3}, "requirements must be a string"),
        ({"script": 3}, "script must be a string"),
        ({"jobtype": "script"}, "a script job needs a script or an executable"),
        ({"script": "x", "inputs": ["http://h/STDOUT.txt"]},
         "would be staged as 'STDOUT.txt', which is the job's output_file_stdout"),
        ({"script": "x", "script_name": "run.sh", "inputs": ["s3://b/run.sh"]},
         "which is the job's script_name"),
        ({"script": "x", "annotations": [1]}, "annotations: Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_each_mistake_is_named(raw, message):
    with pytest.raises(InvalidRequestError) as e:
        JobSpec.parse(raw)
    assert message in str(e.value)


def test_an_executable_alone_is_a_script_job():
    assert JobSpec.parse({"executable": "/bin/true"}).script_name == "script.sh"
    # ...and no input is kept from the name of a script it does not have.
    assert JobSpec.parse({"executable": "/bin/true", "inputs": ["s3://b/script.sh"]}).inputs


# -- the server: what only it knows ----------------------------------------------------------


def test_check_spec_adds_the_queue_and_payload_checks():
    out = check_spec({"script": "x", "queue": "Tiny", "walltime_min": 10}, QUEUES, False)
    assert out["queue"] == "Tiny" and out["walltime_min"] == 10.0 and out["deps"] == []
    with pytest.raises(InvalidRequestError, match="unknown queue 'Nope'; queues are: Test, Tiny"):
        check_spec({"script": "x", "queue": "Nope"}, QUEUES, False)
    with pytest.raises(InvalidRequestError, match="over queue Tiny's maximum of 10 min"):
        check_spec({"script": "x", "queue": "Tiny", "walltime_min": 11}, QUEUES, False)
    with pytest.raises(InvalidRequestError, match="a python job needs a payload"):
        check_spec({"jobtype": "python"}, QUEUES, False)
    assert check_spec({"jobtype": "python"}, QUEUES, True)["jobtype"] == "python"


def test_check_spec_returns_a_copy_the_routes_may_extend():
    raw = {"script": "x", "inputs": ["s3://b/k.csv"]}
    out = check_spec(raw, QUEUES, False)
    out["input_keys"] = {"0": "k"}
    assert raw == {"script": "x", "inputs": ["s3://b/k.csv"]}


# -- the client's builders -----------------------------------------------------------------------


def test_kottajob_builds_a_checked_spec():
    job = KottaJob(script="echo hi", inputs="s3://b/a.csv, https://h/b.csv", outputs="o.txt",
                   walltime=0.5, jobname="hello")  # fmt: skip
    spec = job.spec()
    assert spec.inputs == ["s3://b/a.csv", "https://h/b.csv"] and spec.outputs == ["o.txt"]
    assert spec.name == "hello" and spec.walltime_min == 0.5
    assert job.to_spec() == spec.to_json()
    with pytest.raises(InvalidRequestError, match="not a number"):
        KottaJob(script="true", walltime="soon").spec()


def test_submission_is_the_spec_with_a_fresh_key_and_the_payload():
    job = KottaJob.call(divmod, 7, 2)
    (one, payload), (two, _) = job.submission(), job.submission()
    assert one.jobtype == "python" and one.client and payload
    assert one.idempotency_key and one.idempotency_key != two.idempotency_key
    with pytest.raises(KottaError, match="script= or executable="):
        KottaJob(jobname="empty").submission()


def test_apply_record_binds_the_job_and_drops_its_payload():
    job = KottaJob.call(divmod, 7, 2)
    with pytest.raises(KottaError, match="not been submitted"):
        job.require_id()
    job.apply_record({"id": "abc", "status": "completed", "result": "AAE="}, konn=None)
    assert job.require_id() == job.id == "abc" and job.done()
    assert "result" not in job.info
    with pytest.raises(ConflictError, match="already submitted as job abc"):
        job.submission()


def test_the_client_imports_neither_the_runner_nor_the_server():
    code = (
        "import sys, dask_kotta.client, dask_kotta.client.decorator;"
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('dask_kotta.')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout)
    assert not {"runner", "server", "store", "dask"} & set(loaded), loaded


@pytest.mark.parametrize(
    "module",
    ["dask_kotta.client.kout", "dask_kotta.client.job", "dask_kotta.client.decorator",
     "dask_kotta.client.connection", "dask_kotta.dask.scheduler", "dask_kotta.dask.bag"],
)  # fmt: skip
def test_each_module_imports_first_on_its_own(module):
    # An import cycle shows as an ImportError when one of its modules is imported first.
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=60)
