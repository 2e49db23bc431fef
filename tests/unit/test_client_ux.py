"""The pure parts of the client's failures and progress: advice at a limit, tracebacks, lines."""

from __future__ import annotations

import io
import pickle
import traceback

import cloudpickle
import pytest

from dask_kotta.client import interrupt, progress
from dask_kotta.client.serialize import dumps_call, loads_result
from dask_kotta.errors import RemoteError
from dask_kotta.runner.child import failure
from dask_kotta.server.queues import GiB, Queue, limit_advice

QUEUES = {
    "Test": Queue("Test", 2, 2 * GiB, 1440),
    "Prod": Queue("Prod", 8, 16 * GiB, 10080),
}


@pytest.mark.parametrize(
    "reason, queue, walltime, expected",
    [
        ("walltime exceeded", "Test", 5,
         "walltime exceeded: killed after its walltime of 5 min; queue Test allows up to "
         "1440 min: resubmit with a longer walltime"),
        ("walltime exceeded", "Test", 1440,
         "walltime exceeded: killed after its walltime of 1440 min; queue Prod allows up to "
         "10080 min: resubmit with queue='Prod' and a longer walltime"),
        ("walltime exceeded", "Prod", 10080,
         "walltime exceeded: killed after its walltime of 10080 min, the most any queue allows"),
        ("walltime exceeded", "Test", 0.5,
         "walltime exceeded: killed after its walltime of 0.5 min (30 s); queue Test allows up "
         "to 1440 min: resubmit with a longer walltime"),
        ("memory limit exceeded", "Test", 5,
         "memory limit exceeded: killed above queue Test's memory limit of 2.00 GiB; queue "
         "Prod allows 16.00 GiB: resubmit with queue='Prod'"),
        ("memory limit exceeded", "Prod", 5,
         "memory limit exceeded: killed above queue Prod's memory limit of 16.00 GiB, the most "
         "any queue allows"),
        ("script exited with code 3", "Test", 5, None),
    ],
)  # fmt: skip
def test_a_kill_at_a_limit_names_it_and_what_allows_more(reason, queue, walltime, expected):
    assert limit_advice(reason, queue, walltime, QUEUES) == expected


def _user_code(table):
    return table["missing"]  # the source line


def _outcome(fn) -> dict:
    """What a worker's child sends back for ``fn()``, after a round trip through pickles."""
    fn = cloudpickle.loads(dumps_call(fn, (), {}))["fn"]
    try:
        fn()
    except BaseException as e:
        out = failure(e)
        return {**out, "exc": e}
    raise AssertionError("it did not raise")


def test_a_remote_traceback_starts_at_the_users_code_with_its_lines_and_the_type_once():
    out = _outcome(lambda: _user_code({}))
    assert out["frames"][-1][:3] == [__file__, _user_code.__code__.co_firstlineno + 1, "_user_code"]
    # A worker that cannot read the file sends no source; the client fills it in.
    out["frames"] = [[f, n, name, ""] for f, n, name, _ in out["frames"]]
    with pytest.raises(KeyError) as info:
        loads_result(cloudpickle.dumps(out), "j1")
    shown = "".join(traceback.format_exception(info.value))
    assert 'return table["missing"]  # the source line' in shown
    assert shown.count("KeyError") == 1, shown
    assert "dynamic-code" not in shown and "runner/child.py" not in shown


def test_the_child_describes_an_exception_as_the_shared_module_does():
    # runner/child.py keeps its own copy (it is copied alone into per-job environments).
    from dask_kotta.tracebacks import describe

    try:
        try:
            _user_code({})
        except KeyError as e:
            raise ValueError("wrapped") from e
    except ValueError as e:
        assert failure(e) == describe(e, "no such file")


def test_a_chained_remote_exception_keeps_its_chain():
    def chained():
        try:
            {}["a"]
        except KeyError as e:
            raise ValueError("wrapped") from e

    out = _outcome(chained)
    with pytest.raises(ValueError) as info:
        loads_result(cloudpickle.dumps(out), "j2")
    text = str(info.value)
    assert "KeyError: 'a'" in text and "direct cause" in text
    assert info.value.remote_traceback.rstrip().endswith("ValueError: wrapped")


def test_a_remote_error_of_a_class_the_client_lacks_names_its_type_once():
    out = {"ok": False, "exc": None, "type": "Weird", "message": "odd", "traceback": "T\n"}
    with pytest.raises(RemoteError) as info:
        loads_result(cloudpickle.dumps(out), "j3")
    assert str(info.value).startswith("Weird: odd")
    again = pickle.loads(pickle.dumps(info.value))
    assert again.remote_type == "Weird" and again.job_id == "j3"


def test_the_interrupt_line_names_the_jobs():
    assert interrupt._line(["a"], []) == "kotta: interrupted; cancelled job a"
    ids = [f"j{i}" for i in range(25)]
    line = interrupt._line(ids, ["x"])
    assert line.startswith("kotta: interrupted; cancelled 25 jobs j0, j1,")
    assert "j19 and 5 more; could not cancel x: cancel with `dask-kotta cancel ID`" in line
    assert interrupt._line([], []) == "kotta: interrupted; no job was left running"


def test_progress_off_a_terminal_is_a_few_plain_lines(monkeypatch):
    stream = io.StringIO()
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    with progress.Progress(1000, True, stream) as bar:
        for i in range(1000):
            clock[0] = i * 0.1  # 100 s in all: a line each 30 s, and one at the end
            bar.ended(failed=i % 100 == 0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[-1] == "kotta: 1000/1000 jobs ended, 10 failed (99.9 s)"
    quiet = io.StringIO()
    with progress.Progress(3, False, quiet) as bar:
        bar.ended(False)
    assert quiet.getvalue() == ""


def test_a_function_pickled_by_value_keeps_its_file():
    def local():
        return 1

    fn = cloudpickle.loads(dumps_call(local, (), {}))["fn"]
    assert fn.__code__ is not local.__code__
    assert fn.__code__.co_filename == __file__
    assert fn.__code__.co_firstlineno == local.__code__.co_firstlineno
