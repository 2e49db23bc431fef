"""The slot path's parts in-process, no server: the worker's slot host and a slot job's reports."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import pytest
import requests

from dask_kotta import defaults as d
from dask_kotta.runner.api import RunnerAPI
from dask_kotta.runner.slot_host import SlotHost
from dask_kotta.runner.slot_reporting import PHASE_DEFER_S, SlotReporting


@pytest.fixture
def host():
    h = SlotHost()
    yield h
    h.close()


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name) and t.is_alive()]


def _wait_until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_timed_calls_run_in_due_order_and_server_calls_on_the_pool(host):
    ran: list[str] = []
    host.later(0.15, lambda: ran.append("late"))
    host.later(0.05, lambda: host.background(lambda: ran.append("pooled")))
    host.later(0.0, lambda: ran.append("now"))
    _wait_until(lambda: len(ran) == 3)
    assert ran == ["now", "pooled", "late"]


def test_a_failing_timed_call_does_not_stop_the_others(host):
    ran: list[str] = []
    host.later(0.0, lambda: 1 / 0)
    host.background(lambda: 1 / 0)
    host.later(0.02, lambda: ran.append("after"))
    _wait_until(lambda: ran == ["after"])


def test_the_last_slot_out_closes_the_threads_and_a_later_use_starts_new_ones():
    host = SlotHost()
    # Other tests' hosts may still be winding their threads down: follow this host's own.
    before = set(_threads("kotta-timers"))
    ran: list[int] = []
    with host.running():
        with host.running():
            host.later(0.0, lambda: ran.append(1))
            _wait_until(lambda: ran == [1])
            host.later(60, lambda: ran.append(99))  # never due: dropped by the close
        (mine,) = set(_threads("kotta-timers")) - before  # one slot still runs: still there
    _wait_until(lambda: not mine.is_alive())
    host.later(0.0, lambda: ran.append(2))
    _wait_until(lambda: ran == [1, 2])
    (again,) = set(_threads("kotta-timers")) - before
    assert again is not mine
    host.close()
    _wait_until(lambda: not again.is_alive())
    assert ran == [1, 2]


def test_a_stopped_servers_slots_end_and_the_host_remembers_it(host):
    with host.running():
        assert not host.ended("t1")
        host.end("t1")
    # Closed and used again (a later slot of the same server): still ended.
    with host.running():
        assert host.ended("t1") and not host.ended("t2")
        t = time.monotonic()
        host.pause(5)  # a stopping server cuts a slot's wait short
        assert time.monotonic() - t < 1


def _nowhere() -> str:
    """A URL where nothing listens: any request a test did not expect fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _claim(**extra) -> dict:
    return {"id": "j1", "attempt": 2, "token": "tok", "local_store": True, "inline_max": 1024,
            **extra}  # fmt: skip


def _reporting(host: SlotHost, claim: dict, ends: list) -> SlotReporting:
    api = RunnerAPI(_nowhere(), claim["id"], claim["attempt"], claim["token"], patience_s=0)
    return SlotReporting(api, claim, host, deliver=ends.append)


def test_a_short_jobs_reports_ride_with_its_end_and_make_no_request(host):
    """Payload from the claim, phases, small outputs and result: all in the one end report."""
    ends: list[dict] = []
    r = _reporting(host, _claim(payload=base64.b64encode(b"pickled").decode()), ends)
    dest = io.BytesIO()
    r.fetch_payload(dest)
    assert dest.getvalue() == b"pickled"
    r.report_phase(d.PROCESSING)
    r.report_phase(d.STAGING_OUTPUTS)
    assert r.plan_uploads([{"name": "STDOUT.txt", "size": 3}]) == [None]
    assert r.send_output("STDOUT.txt", io.BytesIO(b"out")) == 3
    assert r.send_result(io.BytesIO(b"result")) == 6
    assert r.report_end(ok=True, reason="", timings={}, outputs=[], has_result=True) == "reported"
    time.sleep(PHASE_DEFER_S + 0.2)  # the deferred phase checks find the job ended: no request
    r.close()
    (end,) = ends
    assert (end["id"], end["attempt"], end["token"]) == ("j1", 2, "tok")
    assert [p["status"] for p in end["phases"]] == [d.PROCESSING, d.STAGING_OUTPUTS]
    assert base64.b64decode(end["files"]["STDOUT.txt"]) == b"out"
    assert base64.b64decode(end["result"]) == b"result"


def test_outputs_past_the_inline_budget_go_to_the_server(host):
    """One file over ``inline_max``, or over four times it in all, is uploaded on its own."""
    ends: list[dict] = []
    r = _reporting(host, _claim(), ends)
    for i in range(4):
        assert r.send_output(f"f{i}", io.BytesIO(b"x" * 1024)) == 1024
    big = io.BytesIO(b"y" * 10)
    with pytest.raises(requests.ConnectionError):  # sent: to where nothing listens
        r.send_output("one-too-many", big)
    with pytest.raises(requests.ConnectionError):
        _reporting(host, _claim(), ends).send_output("large", io.BytesIO(b"z" * 1025))
    r.report_end(ok=True, reason="", timings={}, outputs=[], has_result=False)
    assert sorted(ends[0]["files"]) == ["f0", "f1", "f2", "f3"]
