"""Slots: long-running dask tasks that take jobs from the server in batches.

A slot (see ``server/engine.py``) holds one unit of its queue's worker
resource for as long as it lives. Its loop::

    next (report ended jobs + claim up to N, long-poll) -> run each -> next ...

Each job then runs exactly as a per-job runner runs it (``runner.run_claimed``:
heartbeat, stage inputs, environment, child, outputs, finish), through
:class:`SlotJobAPI`, which saves a short job all of its own round trips:

- the payload arrived with the claim;
- phases are sent only if the job is still going ``PHASE_DEFER_S`` later;
  otherwise they ride with the finish, which records them in order;
- small outputs and the result ride with the finish (base64) when the
  server's object store is local; large ones and S3 go the usual way;
- the finish itself rides with the slot's next request (or, when the slot
  still has claimed jobs to run, with a flush at most ``FLUSH_S`` later),
  and the server records a batch of them in one transaction;
- heartbeats are timers on one thread per worker process, not a thread per job
  (their requests go through a shared pool, so a slow one holds up no other).

How many jobs one request claims adapts: one while jobs run long (so a batch
never holds back jobs another slot could run), doubling up to
``defaults.MAX_CLAIM`` while they end within ``SHORT_S``; the server caps it at the
slot's share of the pending jobs. Claimed jobs waiting behind others in the
batch have their leases renewed every ``FLUSH_S`` while they wait, and one
that was cancelled (or requeued) meanwhile is skipped, never started.

All the slot's jobs share one HTTP connection pool. A slot ends when the
server refuses its secret (a new server process: that one starts its own
slots) or stays unreachable for ``SLOT_PATIENCE_S``; ends not yet reported
then go through each job's own ``/finish``, with a runner's longer patience.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import requests
from requests.adapters import HTTPAdapter

from .. import defaults as d
from . import forkserver
from .api import BROKEN, RunnerAPI
from .runner import beat, run_claimed

log = logging.getLogger("dask_kotta.runner")

#: A phase is reported on its own only if the job is still in it this long after, in seconds.
PHASE_DEFER_S = 0.2
#: How long one ``next`` request is held by the server when no job is pending, in seconds.
#: Short, so a stopping server is not held up by idle slots.
NEXT_WAIT_S = 2.0
#: How long a slot keeps trying an unreachable server, in seconds. Short: a slot holds a unit
#: of its queue's resource, which a server on another address (or a restarted one) needs for
#: its own slots. A job already running keeps its runner's own, longer patience.
SLOT_PATIENCE_S = 5.0
#: A job that ran for less than this, in seconds, lets the slot claim twice as many next time.
SHORT_S = 0.1
#: An ended job's report waits at most this long for the slot's next request, in seconds.
#: Only a slot with more claimed jobs to run keeps one waiting (a backlog): a lone job's end
#: goes out at once with the next request.
FLUSH_S = 0.2
#: Kept reports are sent at once when their inline files and results pass this many bytes.
FLUSH_BYTES = 8 * 1024 * 1024


# Tokens of servers that said they are stopping: their slots end at once instead of
# retrying an unreachable server for SLOT_PATIENCE_S (which would hold up a worker's close).
_ended_tokens: set[str] = set()
_ended = threading.Event()


def end_slots(token: str) -> None:
    """Called on every worker by a stopping server: its slots end now."""
    _ended_tokens.add(token)
    _ended.set()


class SlotEnded(Exception):
    """The server does not know this slot (it restarted): the slot task ends."""


class _Timers(threading.Thread):
    """One thread per worker process that runs calls at due times (phases, heartbeats, flushes).

    The calls it runs itself are quick checks; those that need the server are
    handed to a pool (:func:`_background`), so a slow server holds up no other
    job's heartbeat.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="kotta-timers")
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()

    def add(self, due: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), fn))
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.debug("slot timer call failed", exc_info=True)


_timers: _Timers | None = None
_timers_lock = threading.Lock()


_pool: ThreadPoolExecutor | None = None


def _later(delay: float, fn: Callable[[], None]) -> None:
    """Run the quick ``fn`` on the timer thread ``delay`` seconds from now."""
    global _timers
    with _timers_lock:
        if _timers is None or not _timers.is_alive():
            _timers = _Timers()
            _timers.start()
    _timers.add(time.monotonic() + delay, fn)


def _background(fn: Callable[[], None]) -> None:
    """Run ``fn``, which talks to the server, on the worker's pool for timed calls."""
    global _pool
    with _timers_lock:
        if _pool is None:
            # Threads are made only as calls overlap: one, unless the server is slow.
            _pool = ThreadPoolExecutor(32, thread_name_prefix="kotta-timed")
    _pool.submit(_logged, fn)


def _logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.debug("slot timer call failed", exc_info=True)


class TimerHeartbeat:
    """``runner.Heartbeat`` for a slot's job, on the shared timer thread instead of its own."""

    def __init__(self, api: RunnerAPI, interval: float):
        self.api, self.interval = api, interval
        self.lost: str | None = None
        self._stopped = False

    def start(self) -> None:
        _later(self.interval, self._due)

    def _due(self) -> None:
        if not self._stopped:
            _background(self._beat)

    def _beat(self) -> None:
        self.lost = beat(self.api)
        if self.lost is None and not self._stopped:
            _later(self.interval, self._due)

    def stop(self) -> None:
        self._stopped = True


class SlotJobAPI(RunnerAPI):
    """The runner API for a job a slot claimed; see the module docstring."""

    def __init__(
        self,
        server_url: str,
        claim: dict[str, Any],
        adapter: HTTPAdapter,
        deliver: Callable[[dict[str, Any]], None] | None = None,
    ):
        super().__init__(server_url, claim["id"], claim["attempt"], claim["token"])
        self._adapter = adapter
        self._deliver = deliver
        self._claim = claim
        self._inline_max = int(claim.get("inline_max", 0)) if claim.get("local_store") else 0
        self._lock = threading.Lock()
        self._phases: list[dict[str, Any]] = []
        self._sent = 0
        self._finished = False
        self._files: dict[str, bytes] = {}
        self._inline_total = 0
        self._result: bytes | None = None

    def _new_session(self) -> requests.Session:
        session = super()._new_session()
        # The slot's pool: a job reuses the slot's open connection instead of making one.
        session.mount("http://", self._adapter)
        session.mount("https://", self._adapter)
        return session

    def close(self) -> None:
        if self._session is not None:
            self._session.adapters.clear()  # the adapter is the slot's, and stays open

    def download_payload(self, dest: BinaryIO) -> None:
        if "payload" in self._claim:
            dest.write(base64.b64decode(self._claim["payload"]))
        else:
            super().download_payload(dest)

    def phase(self, status: str) -> None:
        with self._lock:
            self._phases.append({"status": status, "at": time.time()})
        _later(PHASE_DEFER_S, self._phases_due)

    def _phases_due(self) -> None:
        with self._lock:
            if self._finished:
                return  # the usual case: they ride with the finish
        _background(self.send_phases)

    def send_phases(self) -> None:
        """Report the phases not reported yet, unless the job has finished meanwhile."""
        with self._lock:
            if self._finished:
                return
            todo, self._sent = self._phases[self._sent :], len(self._phases)
        for p in todo:
            try:
                self._call("POST", "/phase", patience_s=0, json={"status": p["status"]})
            except Exception:
                # Lost (the heartbeat sees that too) or unreachable: the finish carries them.
                return

    def _keep(self, data: bytes) -> bool:
        with self._lock:
            if (
                len(data) > self._inline_max
                or self._inline_total + len(data) > 4 * self._inline_max
            ):
                return False
            self._inline_total += len(data)
            return True

    def upload_plans(self, files: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        if self._claim.get("local_store"):
            return [None] * len(files)  # a local store has no presigned uploads: no need to ask
        return super().upload_plans(files)

    def upload(self, name: str, f: BinaryIO) -> int:
        if self._inline_max:
            data = f.read(self._inline_max + 1)
            if self._keep(data):
                self._files[name] = data
                return len(data)
            f.seek(0)
        return super().upload(name, f)

    def upload_result(self, f: BinaryIO) -> int:
        if self._inline_max:
            data = f.read(self._inline_max + 1)
            if self._keep(data):
                self._result = data
                return len(data)
            f.seek(0)
        return super().upload_result(f)

    def finish(self, **body) -> str:
        with self._lock:
            self._finished = True
            # All of them: the store skips any the job already reached.
            body["phases"] = list(self._phases)
        if self._files:
            body["files"] = {n: base64.b64encode(b).decode() for n, b in self._files.items()}
        if self._result is not None:
            body["result"] = base64.b64encode(self._result).decode()
        if self._deliver is None:
            return super().finish(**body)
        claim = self._claim
        self._deliver(
            {**body, "id": claim["id"], "attempt": claim["attempt"], "token": claim["token"]}
        )
        return "reported"


def _inline_bytes(report: dict[str, Any]) -> int:
    """The size of a report's inline files and result (base64)."""
    return sum(map(len, report.get("files", {}).values())) + len(report.get("result") or "")


class Slot:
    """One slot's connection to the server, and the job ends it has yet to report."""

    def __init__(self, server_url: str, queue: str, token: str):
        self.server_url = server_url.rstrip("/")
        self.queue = queue
        self.adapter = HTTPAdapter(pool_connections=1, pool_maxsize=8)
        self.session = requests.Session()
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.token = token
        self.worker = socket.gethostname()
        self._lock = threading.Lock()  # the reports: the timer thread flushes them too
        self._reports: list[dict[str, Any]] = []
        self._flush_due = False

    def close(self) -> None:
        self.session.close()

    def deliver(self, report: dict[str, Any]) -> None:
        """Keep an ended job's report for the next request (see ``FLUSH_S``)."""
        with self._lock:
            self._reports.append(report)
            full = sum(map(_inline_bytes, self._reports)) > FLUSH_BYTES
            schedule = not self._flush_due and not full
            self._flush_due = self._flush_due or schedule
        if full:  # many inline files: send them now rather than in one huge request
            self.flush()
        elif schedule:
            _later(FLUSH_S, lambda: _background(self.flush))

    def flush(self) -> None:
        """Report the ends kept so far now, without claiming."""
        with self._lock:
            self._flush_due = False
            if not self._reports:
                return  # sent meanwhile with the slot's own request
        try:
            self.next(want=0, wait=0)
        except SlotEnded:
            self.report_alone()

    def report_alone(self) -> None:
        """Each kept end through its own job's ``/finish`` (the slot's server is gone)."""
        with self._lock:
            reports, self._reports = self._reports, []
        # One runner's patience for all of them, not one each: a server gone for good must
        # not hold up the worker's close by a multiple of it.
        deadline = time.monotonic() + d.RUNNER_PATIENCE_S
        for r in reports:
            patience = max(0.0, deadline - time.monotonic())
            api = RunnerAPI(self.server_url, r.pop("id"), r.pop("attempt"), r.pop("token"),
                            patience_s=patience)  # fmt: skip
            try:
                api.finish(**r)
            except Exception as e:  # lost meanwhile, or the server never came back
                log.warning("could not report the end of a job: %s", e)
            finally:
                api.close()

    def next(
        self, want: int = 1, wait: float = NEXT_WAIT_S, waiting: list[dict[str, Any]] = ()
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """Report kept ends and claim up to ``want`` jobs, waiting up to ``wait`` s for one.

        Also renews the leases of ``waiting`` (claims not started yet). Returns the
        claimed jobs and the ids of the ``waiting`` claims the slot no longer holds.
        """
        deadline = time.monotonic() + SLOT_PATIENCE_S
        delay = 0.2
        with self._lock:
            reports, self._reports = self._reports, []
        held = [{k: c[k] for k in ("id", "attempt", "token")} for c in waiting]
        sent = False
        try:
            while True:
                if self.token in _ended_tokens:
                    raise SlotEnded("the server is stopping")
                try:
                    r = self.session.post(
                        f"{self.server_url}/api/v1/runner/next",
                        params={"queue": self.queue, "wait": wait, "worker": self.worker,
                                "max": want},
                        json={"done": reports, "waiting": held} if reports or held else None,
                        timeout=(d.CONNECT_TIMEOUT_S, wait + 30),
                    )  # fmt: skip
                except BROKEN:
                    r = None
                if r is not None and r.status_code in (401, 404):
                    raise SlotEnded(r.text[:300])
                if r is not None and r.status_code == 200:
                    sent = True
                    answer = r.json()
                    return answer["jobs"], set(answer["lost"])
                if time.monotonic() > deadline:
                    raise SlotEnded(f"server unreachable for {SLOT_PATIENCE_S:.0f} s")
                _ended.wait(delay)
                delay = min(delay * 2, 5.0)
        finally:
            if not sent and reports:
                with self._lock:  # not delivered: the caller reports them another way
                    self._reports[:0] = reports


def _run_batch(slot: Slot, server_url: str, claims: list[dict[str, Any]], want: int) -> int:
    """Run a batch of claimed jobs one after another; returns how many to claim next time."""
    checked, lost = time.monotonic(), set()
    for i, claim in enumerate(claims):
        if i and time.monotonic() - checked > FLUSH_S:
            # The claims still waiting: renew their leases and learn which were cancelled (or
            # requeued) meanwhile, so none starts after it was taken away; kept ends ride along.
            try:
                lost |= slot.next(want=0, wait=0, waiting=claims[i:])[1]
            except SlotEnded:
                pass  # each job's own calls have a runner's patience
            checked = time.monotonic()
        if claim["id"] in lost:
            continue
        t = time.monotonic()
        api = SlotJobAPI(server_url, claim, slot.adapter, deliver=slot.deliver)
        run_claimed(api, claim, heartbeat=TimerHeartbeat)
        want = min(want * 2, d.MAX_CLAIM) if time.monotonic() - t < SHORT_S else 1
    return want


def run_slot(server_url: str, queue: str, token: str) -> str:
    """A dask task: run jobs of ``queue`` in batches until the server ends this slot."""
    forkserver.get()  # warm the template now rather than on the first job
    slot = Slot(server_url, queue, token)
    want = 1
    try:
        while True:
            try:
                claims, _ = slot.next(want)
            except SlotEnded:
                slot.report_alone()
                return "slot ended"
            if not claims:
                want = 1
                continue
            try:
                want = _run_batch(slot, server_url, claims, want)
            except BaseException:
                slot.report_alone()
                raise
    finally:
        slot.close()
