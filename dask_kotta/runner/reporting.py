"""How a job attempt tells the server about itself: the strategy a runner is given.

A runner's steps (``runner.py``: claim -> stage_inputs -> run_child ->
stage_outputs -> report) are the same however the job reached it. Where the
two dispatch modes differ is only *when and how* the job's progress reaches
the server, and that is one object, a :class:`Reporting`, with a method for
each point:

==================  ===========================  =======================================
the point           :class:`Direct`              ``SlotReporting`` (``slot_reporting.py``)
                    (one dask task per job,      (a slot's job, the default)
                    ``DASK_KOTTA_DISPATCH=tasks``)
==================  ===========================  =======================================
``keep_lease``      a heartbeat thread           a timer on the worker's shared thread
``fetch_payload``   ``GET /payload``             the bytes that came with the claim
``report_phase``    ``POST /phase`` now          only if the job is still in it 0.2 s on;
                                                 otherwise it rides with the end
``plan_uploads``    ``POST /uploads``            nothing to ask on a local store
``send_output``     ``PUT /files/<name>``;       the same
                    a small one on a local
                    store rides with the end
``send_result``     ``PUT /result``; a small     the same
                    one rides with the end
                    (any store)
``follow_logs``     ``PUT /logs/<stream>`` from  the same, from the host's timer thread
                    a timer thread, 1 s after    and pool
                    the start, then every 1 s
``report_end``      ``POST /finish`` now,        handed to the slot, which sends a batch
                    returns the job's status     of ends with its next request;
                                                 returns ``"reported"``
==================  ===========================  =======================================

Either way an end the server cannot take when it is sent is written to the
worker's disk at once (``outbox.py``) and delivered when the server is back.

Whatever does not differ (a dependency's result, the headers staged inputs
are fetched with, a multipart upload's completion) the runner asks the
attempt's :class:`~dask_kotta.runner.api.RunnerAPI` directly, as ``reporting.api``.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import requests

from . import outbox
from .api import BROKEN, LostJob, RunnerAPI
from .live_logs import LiveLogs, on_timer_threads


class Lease(Protocol):
    """What keeps a job's lease while it runs; ``lost`` says why it was taken away, if it was."""

    lost: str | None

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Reporting(Protocol):
    """The points where the runner talks to the server about its job; see the module docstring."""

    #: The attempt's runner API, for the calls every strategy makes the same way.
    api: RunnerAPI

    def keep_lease(self, interval: float) -> Lease:
        """Start renewing the job's lease every ``interval`` seconds."""
        ...

    def fetch_payload(self, dest: BinaryIO) -> None:
        """Write the job's pickled payload into ``dest``."""
        ...

    def report_phase(self, status: str) -> None:
        """The job moved on to ``status`` (``processing``, ``staging_outputs``)."""
        ...

    def plan_uploads(self, files: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """How to send each ``{"name", "size"}``: a presigned plan, or None for the server."""
        ...

    def send_output(self, name: str, f: BinaryIO) -> int:
        """Send output ``name`` that goes through the server; returns its size."""
        ...

    def send_result(self, f: BinaryIO) -> int:
        """Send the job's pickled result; returns its size."""
        ...

    def follow_logs(self, workdir: Path, job: Mapping[str, Any]) -> LiveLogs:
        """Start sending the job's STDOUT/STDERR files in ``workdir`` as they grow
        (``live_logs.py``)."""
        ...

    def report_end(self, **report: Any) -> str:
        """The attempt's end (``ok``, ``reason``, ``timings``, ``outputs``...); returns a word
        for the dask dashboard."""
        ...

    def close(self) -> None:
        """Release the attempt's connections."""
        ...


def as_text(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with its reason and traceback as text the server takes (it refuses NUL and
    lone surrogates, which a job's own exception message may hold): escaped, not lost."""
    for key in ("reason", "traceback"):
        value = report.get(key)
        if isinstance(value, str):
            report[key] = (
                value.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
            )
    return report


def beat(api: RunnerAPI) -> str | None:
    """Renew the lease once; returns why the job was taken away (cancel, requeue), if it was."""
    try:
        api.heartbeat()
    except LostJob as e:
        return f"job taken away: {e}"
    except Exception:  # server briefly unreachable: the lease has room for that
        pass
    return None


class Heartbeat(threading.Thread):
    """A :class:`Lease` on a thread of its own: renews, and notices a cancel or requeue."""

    def __init__(self, api: RunnerAPI, interval: float):
        super().__init__(daemon=True, name="kotta-heartbeat")
        self.api, self.interval = api, interval
        self.lost: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.lost is None and not self._stop_event.wait(self.interval):
            self.lost = beat(self.api)

    def stop(self) -> None:
        self._stop_event.set()


def _server_away(e: Exception) -> bool:
    """Whether ``e`` says the server could not be reached or failed (not that it refused)."""
    if isinstance(e, BROKEN):
        return True
    return isinstance(e, requests.HTTPError) and (
        e.response is None or e.response.status_code >= 500
    )


class Inline:
    """The small outputs and result of one attempt, kept to ride with its end (base64).

    Where the server's store is a local directory (``claim["local_store"]``):
    each file up to ``claim["inline_max"]`` bytes, four times that in all. The end
    then carries them, so it needs no other request. On any other store they go
    their usual way, unless the server does not answer: then a small one rides
    with the end too, so that an end kept on disk while the server is away
    (``outbox.py``) is whole.
    """

    def __init__(self, claim: Mapping[str, Any]):
        self.limit = int(claim.get("inline_max", 0))
        self.max = self.limit if claim.get("local_store") else 0
        # A result up to this size rides with the end on any store: the server keeps it in
        # its database (``store/blobs.py``), so it needs no request of its own. 0 from an
        # older server.
        self.result_max = max(self.max, int(claim.get("result_inline_max", 0)))
        self._lock = threading.Lock()
        self._total = 0
        self.files: dict[str, bytes] = {}
        self.result: bytes | None = None

    def take(self, f: BinaryIO, limit: int | None = None) -> bytes | None:
        """``f``'s bytes if small enough to ride with the end; else None, ``f`` rewound."""
        limit = self.max if limit is None else limit
        if not limit:
            return None
        data = f.read(limit + 1)
        with self._lock:
            if len(data) <= limit and self._total + len(data) <= 4 * limit:
                self._total += len(data)
                return data
        f.seek(0)
        return None

    def send(
        self,
        f: BinaryIO,
        upload: Callable[[BinaryIO, float | None], int],
        keep_max: int | None = None,
    ) -> bytes | int:
        """The bytes of ``f`` to keep for the end, or the size ``upload(f, patience_s)`` sent.

        A small file on a local store is kept (up to ``keep_max`` bytes on any store, when
        given); on another store it is uploaded, and kept only if the server does not answer
        at once. Anything else waits on the server with the runner's patience, as before.
        """
        data = self.take(f, keep_max)
        if data is not None:
            return data
        if self.max or not self.limit:
            return upload(f, None)
        try:
            return upload(f, 0)
        except Exception as e:
            if not _server_away(e):
                raise
        f.seek(0)
        data = self.take(f, self.limit)
        return upload(f, None) if data is None else data

    def plans(self, api: RunnerAPI, files: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """``api.upload_plans(files)``; on a local store, or with the server away, None each
        (through the server: :meth:`send`, which keeps what is small)."""
        if self.max:
            return [None] * len(files)  # a local store has no presigned uploads: no need to ask
        try:
            return api.upload_plans(files, patience_s=0)
        except Exception as e:
            if not _server_away(e):
                raise
        return [None] * len(files)

    def add_to(self, report: dict[str, Any]) -> None:
        """Put the kept files and result into the end ``report``."""
        if self.files:
            report["files"] = {n: base64.b64encode(b).decode() for n, b in self.files.items()}
        if self.result is not None:
            report["result"] = base64.b64encode(self.result).decode()


def send_output(inline: Inline, api: RunnerAPI, name: str, f: BinaryIO) -> int:
    """Send (or keep for the end) output ``name``; returns its size."""
    sent = inline.send(f, lambda g, patience: api.upload(name, g, patience_s=patience))
    if isinstance(sent, bytes):
        inline.files[name] = sent
        return len(sent)
    return sent


def send_result(inline: Inline, api: RunnerAPI, f: BinaryIO) -> int:
    """Send (or keep for the end) the pickled result; returns its size."""
    sent = inline.send(
        f, lambda g, patience: api.upload_result(g, patience_s=patience), inline.result_max
    )
    if isinstance(sent, bytes):
        inline.result = sent
        return len(sent)
    return sent


class Direct:
    """Each report is its own request, made at once: a job that is its own dask task.

    Small outputs and the result ride with the end (:class:`Inline`), and so do the
    phases the server could not take when they happened: a job never waits on a server
    that is away, and its end, kept on disk meanwhile, is whole.
    """

    def __init__(self, api: RunnerAPI, claim: Mapping[str, Any] | None = None):
        self.api = api
        self.inline = Inline(claim or {})
        self._phases: list[dict[str, Any]] = []  # not reported yet: they go with the end

    def keep_lease(self, interval: float) -> Lease:
        lease = Heartbeat(self.api, interval)
        lease.start()
        return lease

    def fetch_payload(self, dest: BinaryIO) -> None:
        self.api.download_payload(dest)

    def report_phase(self, status: str) -> None:
        if not self._phases:  # in order: once one is held back, the later ones are too
            try:
                self.api.phase(status, patience_s=0)
                return
            except Exception as e:
                if not _server_away(e):
                    raise
        self._phases.append({"status": status, "at": time.time()})

    def plan_uploads(self, files: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        return self.inline.plans(self.api, files)

    def send_output(self, name: str, f: BinaryIO) -> int:
        return send_output(self.inline, self.api, name, f)

    def send_result(self, f: BinaryIO) -> int:
        return send_result(self.inline, self.api, f)

    def follow_logs(self, workdir: Path, job: Mapping[str, Any]) -> LiveLogs:
        return on_timer_threads(self.api, workdir, job)

    def report_end(self, **report: Any) -> str:
        as_text(report)
        self.inline.add_to(report)
        if self._phases:
            report["phases"] = self._phases
        try:
            return self.api.finish(patience_s=0, **report)
        except Exception as e:
            if not _server_away(e):
                raise
        # The server is away: on disk first (the worker may be killed meanwhile), then the
        # runner's patience; the worker's courier delivers it if that runs out.
        kept = outbox.keep(self.api.server_url, {**report, **self.api.identity})
        try:
            status = self.api.finish(**report)
        except LostJob:
            outbox.drop(kept)
            raise
        except Exception:
            if kept is None:
                raise
            return "end kept on disk"
        outbox.drop(kept)
        return status

    def close(self) -> None:
        self.api.close()


class OutputChannel:
    """What ``stage_out.stage_outputs`` sends a job's outputs through.

    Plans and whole-file sends are the strategy's (a slot keeps small files for
    the end); a multipart upload's completion goes straight to the API.
    """

    def __init__(self, reporting: Reporting):
        self.reporting = reporting

    def upload_plans(self, files: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        return self.reporting.plan_uploads(files)

    def upload(self, name: str, f: BinaryIO) -> int:
        return self.reporting.send_output(name, f)

    def complete_upload(self, name: str, upload_id: str, etags: list[str]) -> None:
        self.reporting.api.complete_upload(name, upload_id, etags)

    def abort_upload(self, name: str, upload_id: str) -> None:
        self.reporting.api.abort_upload(name, upload_id)
