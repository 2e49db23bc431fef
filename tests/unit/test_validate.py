"""What the server accepts as a job description, and what each refusal says."""

from __future__ import annotations

import pytest

from dask_kotta import defaults as d
from dask_kotta.errors import InvalidRequestError
from dask_kotta.server.queues import Queue
from dask_kotta.server.validate import check_spec, input_basename

QUEUES = {
    "Test": Queue("Test", 2, 4 * 2**30, 1440),
    "Prod": Queue("Prod", 8, 16 * 2**30, 600),
}
SCRIPT = {"jobtype": "script", "script": "echo hi"}


def ok(raw, has_payload=False):
    return check_spec(raw, QUEUES, has_payload)


def check_inputs(urls):
    """The inputs a script job with ``urls`` is accepted with (the spec's own check)."""
    return ok({**SCRIPT, "inputs": urls})["inputs"]


def refused(raw, has_payload=False) -> str:
    with pytest.raises(InvalidRequestError) as e:
        check_spec(raw, QUEUES, has_payload)
    assert e.value.status == 400
    return str(e.value)


def test_defaults_are_filled_in():
    spec = ok({"script": "true"})
    assert spec["jobtype"] == "script" and spec["queue"] == d.QUEUE
    assert spec["walltime_min"] == float(d.WALLTIME_MIN)
    assert (spec["stdout"], spec["stderr"], spec["script_name"]) == (
        "STDOUT.txt", "STDERR.txt", "script.sh",
    )  # fmt: skip
    assert (spec["inputs"], spec["outputs"], spec["deps"], spec["retries"]) == ([], [], [], 0)


def test_the_input_is_not_changed():
    raw = {**SCRIPT, "outputs": ["./a//b.csv"], "walltime_min": "5"}
    spec = ok(raw)
    assert spec["outputs"] == ["a/b.csv"] and spec["walltime_min"] == 5.0
    assert raw == {**SCRIPT, "outputs": ["./a//b.csv"], "walltime_min": "5"}


def test_a_python_job_needs_its_payload():
    assert ok({"jobtype": "python"}, has_payload=True)["jobtype"] == "python"
    assert "needs a payload" in refused({"jobtype": "python"})


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ([], "must be a JSON object"),
        ({**SCRIPT, "scirpt": "x"}, "unknown job fields: scirpt"),
        ({**SCRIPT, "jobtype": "java"}, "jobtype 'java' is not one of script, python"),
        ({**SCRIPT, "queue": "Gold"}, "unknown queue 'Gold'; queues are: Test, Prod"),
        ({**SCRIPT, "walltime_min": "long"}, "walltime 'long' is not a number of minutes"),
        ({**SCRIPT, "walltime_min": 0}, "walltime must be > 0 minutes, got 0"),
        ({**SCRIPT, "walltime_min": float("nan")}, "walltime must be > 0 minutes"),
        (
            {**SCRIPT, "walltime_min": 1441},
            "walltime 1441 min is over queue Test's maximum of 1440 min",
        ),
        ({**SCRIPT, "inputs": "s3://b/k"}, "inputs must be a list of strings"),
        ({**SCRIPT, "outputs": [1]}, "outputs must be a list of strings"),
        ({**SCRIPT, "deps": [None]}, "deps must be a list of strings"),
        ({"jobtype": "script"}, "a script job needs a script or an executable"),
        ({**SCRIPT, "outputs": ["../x"]}, "output '../x' escapes the job's directory"),
        ({**SCRIPT, "outputs": ["/etc/passwd"]}, "output '/etc/passwd' is absolute"),
        ({**SCRIPT, "outputs": [".kotta/result.pkl"]}, "'.kotta/' is reserved"),
        ({**SCRIPT, "stdout": "../o"}, "output_file_stdout '../o' escapes"),
        ({**SCRIPT, "script_name": "a\\b"}, "script_name 'a\\\\b' contains a NUL or backslash"),
        ({**SCRIPT, "retries": "x"}, "retries 'x' is not an integer"),
        ({**SCRIPT, "retries": 101}, "retries must be between 0 and 100"),
        ({**SCRIPT, "retries": -1}, "retries must be between 0 and 100"),
        ({**SCRIPT, "name": "n" * 257}, "name must be a string of at most 256 characters"),
        ({**SCRIPT, "name": 5}, "name must be a string"),
        ({**SCRIPT, "requirements": ["numpy"]}, "requirements must be a string"),
        ({"jobtype": "script", "executable": 1}, "executable must be a string"),
        (
            {**SCRIPT, "inputs": ["https://h/x/STDOUT.txt"]},
            "would be staged as 'STDOUT.txt', which is the job's output_file_stdout",
        ),
        (
            {**SCRIPT, "inputs": ["s3://b/script.sh"]},
            "would be staged as 'script.sh', which is the job's script_name",
        ),
    ],
)
def test_refusals_name_what_is_wrong(raw, fragment):
    assert fragment in refused(raw)


def test_an_executable_job_may_take_an_input_named_like_the_default_script():
    # Without a script there is no script file to overwrite.
    spec = ok({"jobtype": "script", "executable": "/bin/true", "inputs": ["s3://b/script.sh"]})
    assert spec["inputs"] == ["s3://b/script.sh"]


@pytest.mark.parametrize(
    "url, base",
    [
        ("s3://bucket/dir/a.csv", "a.csv"),
        ("https://h.example/x/y.tar.gz?sig=1", "y.tar.gz"),
        ("http://h:8080/dir/file/", "file"),
    ],
)
def test_input_basename(url, base):
    assert input_basename(url) == base


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://h/a", "unsupported scheme 'ftp'"),
        ("/local/a", "unsupported scheme '(none)'"),
        ("s3:///key", "names no host or bucket"),
        ("https://h/", "names no file"),
        ("https://h/a/..", "names no file"),
        ("https://h/.", "names no file"),
        ("http://h:port/a", "is malformed"),
    ],
)
def test_input_urls_refused(url, fragment):
    with pytest.raises(InvalidRequestError) as e:
        input_basename(url)
    assert fragment in str(e.value)


def test_inputs_with_user_info_are_refused_without_echoing_the_password():
    with pytest.raises(InvalidRequestError) as e:
        check_inputs(["https://user:s3cret@h.example/a.csv"])
    assert "user-info" in str(e.value) and "s3cret" not in str(e.value)


def test_two_inputs_may_not_share_a_name():
    with pytest.raises(InvalidRequestError, match="would both be staged as 'a.csv'"):
        check_inputs(["s3://b/x/a.csv", "https://h/y/a.csv"])
    assert check_inputs(["s3://b/x/a.csv", "s3://b/x/b.csv"]) == [
        "s3://b/x/a.csv",
        "s3://b/x/b.csv",
    ]
