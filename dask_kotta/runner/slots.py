"""Slots: long-running dask tasks that take jobs from the server in batches.

A slot (see ``server/engine.py``) holds one unit of its queue's worker
resource for as long as it lives, and runs that queue's jobs one after
another. Its loop::

    next: report the ends kept so far + claim up to N jobs (a long-poll)
      -> run each claimed job: runner.run_claimed(job, SlotReporting(...))
      -> next ...

The policy, step by step:

1. **Claim.** ``POST /runner/next`` records the ends the slot kept and claims
   up to ``want`` pending jobs of the queue, oldest first, with their leases,
   dispatch tokens and small payloads, in one answer. When none is pending
   the server holds the request up to ``NEXT_WAIT_S``, and answers early
   when one is submitted.
2. **How many.** ``want`` adapts (:func:`next_want`): doubling up to
   ``defaults.MAX_CLAIM``, but never more jobs than the last batch's took
   ``BATCH_S`` to run, so a batch of long jobs never holds back jobs another
   slot could run (one at a time past ``BATCH_S`` each). The server caps it at
   the slot's share of the pending jobs.
3. **Run.** Each job runs exactly as a one-task-per-job runner runs it
   (``runner.run_claimed``), with a :class:`~.slot_reporting.SlotReporting`
   as its way of reporting: payload from the claim, phases deferred, small
   files inline, and the end handed back to the slot (:meth:`Slot.deliver`).
4. **Waiting claims.** Claimed jobs waiting behind others in the batch have
   their leases renewed every ``FLUSH_S`` while they wait (a ``next`` that
   claims nothing); one that was cancelled (or requeued) meanwhile is
   skipped, never started.
5. **Ends.** A kept end goes out with the slot's next request: at once for
   the last job of a batch, since the slot asks again right away. While more
   claimed jobs are to run, a flush on the host's timer sends the kept ends
   at most ``FLUSH_S`` later, or at once past ``FLUSH_BYTES`` of inline
   files. The server records a batch of ends in one transaction.
6. **Server away.** Ends the slot could not send (the server unreachable, or
   failing) are written to the worker's disk at once (``outbox.py``), so a
   worker killed before the server is back does not lose them; they are
   removed once the server has them.
7. **End of a slot.** A slot ends when the server refuses its secret (a new
   server process: that one starts its own slots), says it is stopping
   (:func:`end_slots`), or stays unreachable for ``SLOT_PATIENCE_S``. Ends
   not reported then go through each job's own ``/finish``, with a runner's
   longer patience (:meth:`Slot.report_alone`); what still cannot be
   delivered waits on disk for the worker's courier.

All the slot's jobs share one HTTP connection pool. What the slots of a
worker process share (the timer thread for heartbeats, deferred phases and
flushes; the pool for their requests; the servers that have stopped) is one
:class:`~.slot_host.SlotHost`, held while the slot runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .. import defaults as d
from . import forkserver, outbox
from .api import BROKEN, LostJob, RunnerAPI, worker_name
from .runner import run_claimed
from .slot_host import SlotHost, process_host, worker_closing
from .slot_reporting import SlotReporting

log = logging.getLogger("dask_kotta.runner")

#: How long one ``next`` request is held by the server when no job is pending, in seconds.
#: A stopping server answers held requests at once (``Notifier.close``), and a submit wakes
#: them, so this bounds only what the server cannot see: a job made through another server
#: process on the same database, a worker that starts to close. Each idle slot asks again
#: after it: at 2 s, an idle ``up`` (16 slots) used 7.7% of a core, at 10 s 4.1%.
NEXT_WAIT_S = 10.0
#: How long a slot keeps trying an unreachable server, in seconds. Short: a slot holds a unit
#: of its queue's resource, which a server on another address (or a restarted one) needs for
#: its own slots. A job already running keeps its runner's own, longer patience.
SLOT_PATIENCE_S = 5.0
#: A slot claims about this many seconds of jobs at most, judged by its last batch's.
#: Judged per batch, not by a cut-off per job: the wall time of a job grows with the slots
#: sharing the host's cores, and a cut-off made a busy host claim one job per request.
BATCH_S = 2.0
#: An ended job's report waits at most this long for the slot's next request, in seconds.
#: Only a slot with more claimed jobs to run keeps one waiting (a backlog): a lone job's end
#: goes out at once with the next request.
FLUSH_S = 0.2
#: Kept reports are sent at once when their inline files and results pass this many bytes.
FLUSH_BYTES = 8 * 1024 * 1024


def end_slots(token: str) -> None:
    """Called on every worker by a stopping server: its slots end now."""
    process_host().end(token)


class SlotEnded(Exception):
    """The server does not know this slot (it restarted): the slot task ends."""


def _inline_bytes(report: dict[str, Any]) -> int:
    """The size of a report's inline files and result (base64)."""
    return sum(map(len, report.get("files", {}).values())) + len(report.get("result") or "")


class Slot:
    """One slot's connection to the server, and the job ends it has yet to report."""

    def __init__(self, server_url: str, queue: str, token: str, host: SlotHost):
        self.server_url = server_url.rstrip("/")
        self.host = host
        self.queue = queue
        self.adapter = HTTPAdapter(pool_connections=1, pool_maxsize=8)
        self.session = requests.Session()
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.token = token
        self.worker = worker_name()
        self._lock = threading.Lock()  # the reports: the timer thread flushes them too
        self._reports: list[dict[str, Any]] = []
        self._flush_due = False
        #: (job id, attempt) -> the file of an end kept on disk while the server was away
        self._kept: dict[tuple[str, int], Any] = {}

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
            self.host.later(FLUSH_S, lambda: self.host.background(self.flush))

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

    def _keep_on_disk(self, reports: Sequence[dict[str, Any]]) -> None:
        """Write the ends not kept yet to the outbox: the server did not take them."""
        for r in reports:
            key = (r["id"], r["attempt"])
            if key not in self._kept:
                self._kept[key] = outbox.keep(self.server_url, r)

    def _delivered(self, reports: Sequence[dict[str, Any]]) -> None:
        for r in reports:
            outbox.drop(self._kept.pop((r["id"], r["attempt"]), None))

    def report_alone(self) -> None:
        """Each kept end through its own job's ``/finish`` (the slot's server is gone)."""
        with self._lock:
            reports, self._reports = self._reports, []
        if not reports:
            return
        # On disk first: the worker may be killed while the server is away.
        self._keep_on_disk(reports)
        # One runner's patience for all of them, not one each: a server gone for good must
        # not hold up the worker's close by a multiple of it. A closing worker tries once: what
        # is left on disk goes with the host's next worker process.
        deadline = time.monotonic() + (0.0 if worker_closing() else d.RUNNER_PATIENCE_S)
        for r in reports:
            patience = max(0.0, deadline - time.monotonic())
            body = {k: v for k, v in r.items() if k not in ("id", "attempt", "token")}
            api = RunnerAPI(self.server_url, r["id"], r["attempt"], r["token"],
                            patience_s=patience)  # fmt: skip
            try:
                api.finish(**body)
            except LostJob as e:
                log.warning("job %s: its end came after it was taken from this attempt: %s",
                            r["id"], e)  # fmt: skip
            except Exception as e:  # the server never came back (yet): the courier goes on
                log.warning("job %s: end not delivered (%s); kept on disk for the server's return",
                            r["id"], e)  # fmt: skip
                continue
            finally:
                api.close()
            self._delivered([r])

    def next(
        self, want: int = 1, wait: float = NEXT_WAIT_S, waiting: Sequence[dict[str, Any]] = ()
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
                if self.host.ended(self.token):
                    raise SlotEnded("the server is stopping")
                if worker_closing():
                    raise SlotEnded("the worker is closing")
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
                    self._delivered(reports)
                    answer = r.json()
                    for report, status in zip(reports, answer.get("done") or (), strict=False):
                        if status is None:  # said, not silently dropped: see issue 13
                            log.warning("job %s: its end (attempt %s) came after the job was "
                                        "taken from this attempt (cancelled or requeued)",
                                        report.get("id"), report.get("attempt"))  # fmt: skip
                    return answer["jobs"], set(answer["lost"])
                if reports:
                    self._keep_on_disk(reports)
                if time.monotonic() > deadline:
                    raise SlotEnded(f"server unreachable for {SLOT_PATIENCE_S:.0f} s")
                self.host.pause(delay)
                delay = min(delay * 2, 5.0)
        finally:
            if not sent and reports:
                with self._lock:  # not delivered: the caller reports them another way
                    self._reports[:0] = reports

    def reporting(self, claim: dict[str, Any]) -> SlotReporting:
        """The way a job this slot claimed reports: over the slot's connections, its end
        kept by the slot."""
        api = RunnerAPI(
            self.server_url, claim["id"], claim["attempt"], claim["token"], adapter=self.adapter
        )
        return SlotReporting(api, claim, self.host, deliver=self.deliver)


def _run_batch(slot: Slot, claims: list[dict[str, Any]], want: int) -> int:
    """Run a batch of claimed jobs one after another; returns how many to claim next time."""
    checked, lost = time.monotonic(), set()
    ran, took = 0, 0.0
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
        run_claimed(claim, slot.reporting(claim))
        ran, took = ran + 1, took + time.monotonic() - t
    return next_want(want, took / ran) if ran else want


def next_want(want: int, per_job: float) -> int:
    """How many jobs a slot claims next, after ``want`` whose jobs took ``per_job`` s each."""
    fits = int(BATCH_S / per_job) if per_job > 0 else d.MAX_CLAIM
    return max(1, min(want * 2, d.MAX_CLAIM, fits))


def run_slot(server_url: str, queue: str, token: str) -> str:
    """A dask task: run jobs of ``queue`` in batches until the server ends this slot."""
    forkserver.get()  # warm the template now rather than on the first job
    outbox.start()  # ends a dead worker process of this host left on disk go out first
    with process_host().running() as host:
        return _serve(Slot(server_url, queue, token, host))


def _serve(slot: Slot) -> str:
    """Claim and run batches until the slot ends; see the module docstring."""
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
                want = _run_batch(slot, claims, want)
            except BaseException:
                slot.report_alone()
                raise
    finally:
        slot.close()
