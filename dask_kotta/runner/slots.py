"""Slots: long-running dask tasks that take one job after another from the server.

A slot (see ``server/engine.py``) holds one unit of its queue's worker
resource for as long as it lives. Its loop::

    next (long-poll: claim + dispatch token + small payload) -> run_claimed -> next ...

Each job then runs exactly as a per-job runner runs it (``runner.run_claimed``:
heartbeat, stage inputs, environment, child, outputs, finish), through
:class:`SlotJobAPI`, which saves a short job most of its round trips:

- the payload arrived with the claim;
- phases are sent only if the job is still going ``PHASE_DEFER_S`` later;
  otherwise they ride with the finish, which records them in order;
- small outputs and the result ride with the finish (base64) when the
  server's object store is local; large ones and S3 go the usual way.

All the slot's jobs share one HTTP connection pool. A slot ends when the
server refuses its secret (a new server process: that one starts its own
slots) or stays unreachable for ``SLOT_PATIENCE_S``.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import socket
import threading
import time
from typing import Any, BinaryIO

import requests
from requests.adapters import HTTPAdapter

from .. import defaults as d
from . import forkserver
from .api import RunnerAPI
from .runner import run_claimed

#: A phase is reported on its own only if the job is still in it this long after, in seconds.
PHASE_DEFER_S = 0.2
#: How long one ``next`` request is held by the server when no job is pending, in seconds.
#: Short, so a stopping server is not held up by idle slots.
NEXT_WAIT_S = 2.0
#: How long a slot keeps trying an unreachable server, in seconds. Short: a slot holds a unit
#: of its queue's resource, which a server on another address (or a restarted one) needs for
#: its own slots. A job already running keeps its runner's own, longer patience.
SLOT_PATIENCE_S = 5.0


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


class _DeferredPhases(threading.Thread):
    """One thread per worker process: sends the phases of jobs that outlive ``PHASE_DEFER_S``."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="kotta-phases")
        self._heap: list[tuple[float, int, SlotJobAPI]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()

    def add(self, api: SlotJobAPI, due: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), api))
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, api = heapq.heappop(self._heap)
            api.send_phases()


_phases: _DeferredPhases | None = None
_phases_lock = threading.Lock()


def _deferred() -> _DeferredPhases:
    global _phases
    with _phases_lock:
        if _phases is None or not _phases.is_alive():
            _phases = _DeferredPhases()
            _phases.start()
        return _phases


class SlotJobAPI(RunnerAPI):
    """The runner API for a job a slot claimed; see the module docstring."""

    def __init__(self, server_url: str, claim: dict[str, Any], adapter: HTTPAdapter):
        super().__init__(server_url, claim["id"], claim["attempt"], claim["token"])
        # The slot's pool: a job reuses the slot's open connection instead of making one.
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._claim = claim
        self._inline_max = int(claim.get("inline_max", 0)) if claim.get("local_store") else 0
        self._lock = threading.Lock()
        self._phases: list[dict[str, Any]] = []
        self._sent = 0
        self._finished = False
        self._files: dict[str, bytes] = {}
        self._inline_total = 0
        self._result: bytes | None = None

    def close(self) -> None:
        self.session.adapters.clear()  # the adapter is the slot's, and stays open

    def download_payload(self, dest: BinaryIO) -> None:
        if "payload" in self._claim:
            dest.write(base64.b64decode(self._claim["payload"]))
        else:
            super().download_payload(dest)

    def phase(self, status: str) -> None:
        with self._lock:
            self._phases.append({"status": status, "at": time.time()})
        _deferred().add(self, time.monotonic() + PHASE_DEFER_S)

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
        return super().finish(**body)


class Slot:
    """One slot's connection to the server."""

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

    def close(self) -> None:
        self.session.close()

    def next(self, wait: float = NEXT_WAIT_S) -> dict[str, Any] | None:
        """The next job of the queue (claimed), or None if none came within ``wait`` s."""
        deadline = time.monotonic() + SLOT_PATIENCE_S
        delay = 0.2
        while True:
            if self.token in _ended_tokens:
                raise SlotEnded("the server is stopping")
            try:
                r = self.session.post(
                    f"{self.server_url}/api/v1/runner/next",
                    params={"queue": self.queue, "wait": wait, "worker": self.worker},
                    timeout=(d.CONNECT_TIMEOUT_S, wait + 30),
                )
            except (requests.ConnectionError, requests.Timeout):
                r = None
            if r is not None and r.status_code in (401, 404):
                raise SlotEnded(r.text[:300])
            if r is not None and r.status_code == 204:
                return None
            if r is not None and r.status_code == 200:
                return r.json()
            if time.monotonic() > deadline:
                raise SlotEnded(f"server unreachable for {SLOT_PATIENCE_S:.0f} s")
            _ended.wait(delay)
            delay = min(delay * 2, 5.0)


def run_slot(server_url: str, queue: str, token: str) -> str:
    """A dask task: run jobs of ``queue`` one after another until the server ends this slot."""
    forkserver.get()  # warm the template now rather than on the first job
    slot = Slot(server_url, queue, token)
    try:
        while True:
            try:
                claim = slot.next()
            except SlotEnded:
                return "slot ended"
            if claim is not None:
                run_claimed(SlotJobAPI(server_url, claim, slot.adapter), claim)
    finally:
        slot.close()
