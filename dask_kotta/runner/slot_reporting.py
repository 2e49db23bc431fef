"""How a slot's job reports to the server: as little as possible, as late as is safe.

A slot's jobs are mostly short (tens of milliseconds), and each request to
the server costs about as much as the job. :class:`SlotReporting` is the
:class:`~.reporting.Reporting` a slot gives the runner for each job; it saves
the job all of its own round trips in the usual case:

- **payload**: it came with the claim (when small), so it is not fetched;
- **phases**: a phase is only sent if the job is still going
  ``PHASE_DEFER_S`` after it began (a check on the host's timer thread);
  otherwise it rides with the end, and the server records it before the end,
  in order;
- **outputs and result**: when the server's object store is local, files up
  to the claim's ``inline_max`` (and four times that in all) are kept and
  ride with the end, base64; larger ones, and any on S3, go the usual way,
  unless the server does not answer (``reporting.Inline``). On a local store
  there are no presigned uploads, so none are asked for;
- **end**: handed to the slot (``deliver``), which sends the ends of its
  jobs together with its next request (``slots.py``);
- **lease**: renewed by a timer on the host's thread (``slot_host.py``);
- **live logs**: a job still running 1 s after it started sends its new output
  from the host's timer thread and pool (``live_logs.py``); a shorter one sends none.

So a short job that writes small files costs one share of the slot's next
request, and nothing else.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .api import RunnerAPI
from .live_logs import LiveLogs
from .reporting import Inline, Lease, as_text, send_output, send_result
from .slot_host import SlotHost, TimerHeartbeat

#: A phase is reported on its own only if the job is still in it this long after, in seconds.
PHASE_DEFER_S = 0.2


class SlotReporting:
    """The :class:`~.reporting.Reporting` of one job a slot claimed; see the module docstring."""

    def __init__(
        self,
        api: RunnerAPI,
        claim: dict[str, Any],
        host: SlotHost,
        deliver: Callable[[dict[str, Any]], None],
    ):
        self.api = api
        self._claim = claim
        self._host = host
        self._deliver = deliver
        self._lock = threading.Lock()  # phases: the timer's pool reads them
        self._phases: list[dict[str, Any]] = []
        self._sent = 0
        self._ended = False
        self.inline = Inline(claim)

    def keep_lease(self, interval: float) -> Lease:
        lease = TimerHeartbeat(self.api, interval, self._host)
        lease.start()
        return lease

    def fetch_payload(self, dest: BinaryIO) -> None:
        if "payload" in self._claim:
            dest.write(base64.b64decode(self._claim["payload"]))
        else:
            self.api.download_payload(dest)

    # -- phases: deferred ---------------------------------------------------------------

    def report_phase(self, status: str) -> None:
        with self._lock:
            self._phases.append({"status": status, "at": time.time()})
        self._host.later(PHASE_DEFER_S, self._phases_due)

    def _phases_due(self) -> None:
        with self._lock:
            if self._ended:
                return  # the usual case: they ride with the end
        self._host.background(self._send_phases)

    def _send_phases(self) -> None:
        """Report the phases not reported yet, unless the job has ended meanwhile."""
        with self._lock:
            if self._ended:
                return
            todo, self._sent = self._phases[self._sent :], len(self._phases)
        for p in todo:
            try:
                self.api.phase(p["status"], patience_s=0)
            except Exception:
                # Lost (the heartbeat sees that too) or unreachable: the end carries them.
                return

    # -- outputs and result: small ones inline ------------------------------------------

    def plan_uploads(self, files: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        return self.inline.plans(self.api, files)

    def send_output(self, name: str, f: BinaryIO) -> int:
        return send_output(self.inline, self.api, name, f)

    def send_result(self, f: BinaryIO) -> int:
        return send_result(self.inline, self.api, f)

    # -- live logs: on the host's timer, from 1 s after the start -----------------------

    def follow_logs(self, workdir: Path, job: Mapping[str, Any]) -> LiveLogs:
        logs = LiveLogs(self.api, workdir, job, self._host.later, self._host.background)
        logs.start()
        return logs

    # -- end: delivered to the slot -----------------------------------------------------

    def report_end(self, **report: Any) -> str:
        as_text(report)
        with self._lock:
            self._ended = True
            # All of them: the store skips any the job already reached.
            report["phases"] = list(self._phases)
        self.inline.add_to(report)
        claim = self._claim
        self._deliver(
            {**report, "id": claim["id"], "attempt": claim["attempt"], "token": claim["token"]}
        )
        return "reported"

    def close(self) -> None:
        self.api.close()
