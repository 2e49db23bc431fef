"""The runner's side of the runner API, with patience for a restarting server.

One :class:`RunnerAPI` per job attempt; each method is one request and means
the same whichever way the job was dispatched. When a request is made (at
once, later, or folded into a slot's batch) is the business of the runner's
reporting strategy (``reporting.py``), not of this module.
"""

from __future__ import annotations

import socket
import time
from typing import Any, BinaryIO

import requests
from requests.adapters import HTTPAdapter

from .. import defaults as d


def worker_name() -> str:
    """``HOST DASK-ADDRESS`` of the worker a runner runs on, as its claims record it.

    The server shows the host; the address tells it, from the scheduler's list of
    live workers, that a job's worker is gone (then the job is requeued at once,
    not at its lease's end). Outside a dask worker, the host only.
    """
    host = socket.gethostname()
    try:
        from distributed import get_worker

        return f"{host} {get_worker().address}"
    except (ImportError, ValueError):
        return host


#: A request that never got its whole answer: the server went away (a restart) mid-response.
BROKEN = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class LostJob(Exception):
    """This attempt no longer holds the job (cancelled, requeued, or finished elsewhere)."""


class RunnerAPI:
    """Calls for one job attempt. Connection errors are retried for ``patience_s``.

    ``adapter``, if given, is a connection pool shared with others (a slot's):
    the attempt's requests reuse its open connections, and :meth:`close`
    leaves it open for its owner.
    """

    def __init__(
        self,
        server_url: str,
        job_id: str,
        attempt: int,
        token: str,
        patience_s: float = d.RUNNER_PATIENCE_S,
        adapter: HTTPAdapter | None = None,
    ):
        self.server_url = server_url.rstrip("/")
        self.base = f"{self.server_url}/api/v1/runner/jobs/{job_id}"
        #: Who this attempt is, as an end kept on disk names it (``outbox.py``).
        self.identity = {"id": job_id, "attempt": attempt, "token": token}
        self.patience_s = patience_s
        self._headers = {"Authorization": f"Bearer {token}", "X-Kotta-Attempt": str(attempt)}
        self._adapter = adapter
        self._session: requests.Session | None = None

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(self._headers)
        if self._adapter is not None:
            session.mount("http://", self._adapter)
            session.mount("https://", self._adapter)
        return session

    @property
    def session(self) -> requests.Session:
        # Made on first use: a short slot job never calls the server on its own.
        if self._session is None:
            self._session = self._new_session()
        return self._session

    def close(self) -> None:
        if self._session is not None:
            if self._adapter is not None:
                self._session.adapters.clear()  # the shared pool stays open for its owner
            self._session.close()

    def _call(
        self, method: str, path: str, patience_s: float | None = None, **kw
    ) -> requests.Response:
        deadline = time.monotonic() + (self.patience_s if patience_s is None else patience_s)
        delay = 0.2
        kw.setdefault("timeout", (d.CONNECT_TIMEOUT_S, 120))
        while True:
            try:
                body = kw.get("data")
                if hasattr(body, "seek"):
                    body.seek(0)
                r = self.session.request(method, self.base + path, **kw)
            except BROKEN:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if r.status_code == 409:
                raise LostJob(r.json().get("detail", "lost the job"))
            if r.status_code >= 500 and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            r.raise_for_status()
            return r

    def claim(self) -> dict[str, Any]:
        return self._call("POST", "/claim", params={"worker": worker_name()}).json()

    def heartbeat(self) -> None:
        # A short timeout: slots beat on one shared timer thread, which must not hang.
        self._call("POST", "/heartbeat", patience_s=0, timeout=(d.CONNECT_TIMEOUT_S, 10))

    def phase(self, status: str, patience_s: float | None = None) -> None:
        self._call("POST", "/phase", patience_s=patience_s, json={"status": status})

    def _download(self, path: str, dest: BinaryIO) -> None:
        """GET ``path`` into ``dest`` (seekable), from the start again if the body breaks off."""
        deadline = time.monotonic() + self.patience_s
        while True:
            r = self._call("GET", path, stream=True)
            try:
                dest.seek(0)
                dest.truncate()
                for chunk in r.iter_content(1024 * 1024):
                    dest.write(chunk)
                return
            except BROKEN:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            finally:
                r.close()

    def download_payload(self, dest: BinaryIO) -> None:
        self._download("/payload", dest)

    def download_dep(self, dep_id: str, dest: BinaryIO) -> None:
        """The result of job ``dep_id``, one of this job's ``deps`` (refused otherwise)."""
        self._download(f"/deps/{dep_id}/result", dest)

    def upload(self, name: str, f: BinaryIO, patience_s: float | None = None) -> int:
        return self._call("PUT", f"/files/{name}", patience_s=patience_s, data=f).json()["size"]

    @property
    def dispatch_headers(self) -> dict[str, str]:
        """The headers that let a runner-API URL of this attempt be fetched (staged inputs)."""
        return dict(self._headers)

    def upload_plans(
        self, files: list[dict[str, Any]], patience_s: float | None = None
    ) -> list[dict[str, Any] | None]:
        """How to send each ``{"name", "size"}``: presigned URLs, or None for through the server."""
        body = {"files": files}
        return self._call("POST", "/uploads", patience_s=patience_s, json=body).json()["plans"]

    def destination_plans(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A presigned PUT per ``{"name", "size"}`` of the job's declared destinations."""
        body = {"files": files}
        return self._call("POST", "/destinations", json=body).json()["plans"]

    def complete_upload(self, name: str, upload_id: str, etags: list[str]) -> None:
        body = {"name": name, "upload_id": upload_id, "etags": etags}
        self._call("POST", "/uploads/complete", json=body)

    def abort_upload(self, name: str, upload_id: str) -> None:
        self._call("POST", "/uploads/complete", patience_s=0,
                   json={"name": name, "upload_id": upload_id, "abort": True})  # fmt: skip

    def upload_result(self, f: BinaryIO, patience_s: float | None = None) -> int:
        return self._call("PUT", "/result", patience_s=patience_s, data=f).json()["size"]

    def send_log(
        self,
        stream: str,
        offset: int,
        data: bytes,
        final: bool = False,
        patience_s: float | None = None,
    ) -> int:
        """Send the job's ``stream`` bytes from ``offset`` (``final``: the last); the size
        the server holds now."""
        params = {"offset": offset, "final": "true" if final else "false"}
        # A short read timeout: a send holds up the next one, and the job's end (finish).
        r = self._call("PUT", f"/logs/{stream}", patience_s=patience_s, params=params,
                       data=data, timeout=(d.CONNECT_TIMEOUT_S, 10))  # fmt: skip
        return r.json()["size"]

    def finish(self, patience_s: float | None = None, **body) -> str:
        return self._call("POST", "/finish", patience_s=patience_s, json=body).json()["status"]
