"""``Kotta``: one authenticated connection to a Kotta server."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import requests
from requests.adapters import HTTPAdapter

from .. import defaults as d
from ..errors import (
    InvalidRequestError,
    KottaError,
    ServerUnavailableError,
    error_for_status,
)
from ..jobspec import JobSpec
from ..transfer.common import StagingError, http_session
from ..transfer.upload import send_file
from . import creds as creds_mod
from . import many
from .download import download
from .job import KottaJob
from .logs import LogChunk, read_log
from .mapping import CallFuture, map_calls
from .retry import RETRY_STATUSES, RetryPolicy, parse_retry_after, window_s


class Links(dict[str, str]):
    """Download links by output name (``Kotta.links``); ``expires``: when they stop working,
    in Unix seconds."""

    def __init__(self, links: Mapping[str, str], expires: float):
        super().__init__(links)
        self.expires = expires


class Kotta:
    """A connection to a Kotta server, made from credentials.

    >>> konn = Kotta(open('../auth.file').read())   # the JSON text
    >>> konn = Kotta('../auth.file')                # or its path
    >>> konn = Kotta()                              # or found where they usually are

    The credentials are ``{"url": "http://host:port", "token": "..."}`` as
    written by ``dask-kotta up`` or ``dask-kotta token NAME``: the JSON text, a
    dict, or the path of a file holding them (a ``str`` not starting with ``{``,
    or a ``pathlib.Path``). With none, they are read from the first file of
    ``$KOTTA_AUTH_FILE``, ``./auth.file``, ``~/.config/dask-kotta/auth.json``
    (``$XDG_CONFIG_HOME`` respected); ``ConfigError`` names the places looked
    in when there is none, or the file that is not valid credentials. The server is
    asked who the token belongs to right away, so bad credentials (and a wrong
    URL) fail here, at once.

    Later calls ride through a server restart: reads, waits (``gather``,
    ``get_results``, ``KottaJob.wait``), cancels and submits are retried while
    the server cannot be reached or answers 502/503/504, for ``retry_window``
    seconds (keyword-only; default 60, or ``DASK_KOTTA_RETRY_WINDOW_S`` from
    the environment; 0 turns it off). A submit is retried with the same
    idempotency keys, so it never makes a job twice. ``timeout`` is the read
    timeout of one request, in seconds.
    """

    def __init__(
        self,
        creds: str | os.PathLike[str] | dict | None = None,
        *,
        timeout: float = d.READ_TIMEOUT_S,
        retry_window: float | None = None,
    ):
        info = creds_mod.load(creds)
        self.url: str = info["url"].rstrip("/")
        self._token: str = info["token"]
        self.timeout = timeout
        #: How the calls that are safe to repeat are retried (see ``dask_kotta.client.retry``).
        self.retry = RetryPolicy(window_s(retry_window))
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self._token}"
        self.session.headers["User-Agent"] = "dask-kotta-client"
        adapter = HTTPAdapter(pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # The first contact is not retried: a typo in the URL should not cost a minute.
        self.user: dict[str, Any] = self.request("GET", "/api/v1/whoami", retry=False).json()

    @property
    def retry_window(self) -> float:
        """Seconds a call that is safe to repeat keeps retrying an unavailable server."""
        return self.retry.window_s

    def __repr__(self) -> str:
        return f"<Kotta {self.url} user={self.user.get('name')!r}>"

    def __reduce__(self):
        # A connection holds its user's token (and live sockets): it must never ride inside
        # a job's payload, as it would in the closure of a function sent to a job.
        raise TypeError(
            "a Kotta connection holds your token and is never sent to a job; "
            "make one inside the function if the job itself must call Kotta"
        )

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Kotta:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        retry: bool | None = None,
        **kw: Any,
    ) -> requests.Response:
        """One API call; raises the ``APIError`` subclass for a 4xx/5xx answer.

        With ``retry`` (by default for GET and HEAD only) the call rides through
        a restart: it is retried under ``self.retry`` while the server cannot be
        reached or answers 502/503/504. Pass ``retry=True`` only for a call that
        is safe to repeat.
        """
        if retry is None:  # reads change nothing on the server: repeating one is always safe
            retry = method.upper() in ("GET", "HEAD")
        if not retry:
            return self._send(method, path, timeout, kw)
        return self.retry.run(lambda: self._send(method, path, timeout, kw))

    def _long_poll(
        self, hold: float, send: Callable[[float], requests.Response]
    ) -> requests.Response:
        """A request the server holds up to ``hold`` s (``send(h)`` asks for ``h``), retried.

        Long polls only read, so they are safe to repeat; one broken off by a
        restart resumes for what is left of its own hold, not the whole of it again.
        """
        end = time.monotonic() + hold
        return self.retry.run(lambda: send(max(0.0, end - time.monotonic())))

    def _send(
        self, method: str, path: str, timeout: float | None, kw: dict[str, Any]
    ) -> requests.Response:
        url = path if path.startswith(("http://", "https://")) else self.url + path
        try:
            r = self.session.request(
                method, url, timeout=(d.CONNECT_TIMEOUT_S, timeout or self.timeout), **kw
            )
        except requests.ConnectionError as e:
            raise ServerUnavailableError(
                f"cannot reach the Kotta server at {self.url}: {_short(e)}"
            ) from None
        except requests.Timeout:
            raise ServerUnavailableError(
                f"the Kotta server at {self.url} did not answer in time"
            ) from None
        except requests.exceptions.ChunkedEncodingError as e:
            # The server went away in the middle of its answer (a kill -9 or a crash): as
            # transient as a refused connection, and retried as one where that is safe.
            raise ServerUnavailableError(
                f"the Kotta server at {self.url} broke off its answer: {_short(e)}"
            ) from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text or r.reason
            if r.status_code == 401:
                detail = f"credentials rejected by {self.url}: {detail}"
            err = error_for_status(
                r.status_code, detail if isinstance(detail, str) else json.dumps(detail)
            )
            if r.status_code in RETRY_STATUSES:
                err.retry_after = parse_retry_after(r.headers.get("Retry-After"))
            raise err
        return r

    # -- jobs ---------------------------------------------------------------------------

    def submit_specs(
        self, specs: Sequence[JobSpec | Mapping[str, Any]], payloads: Sequence[bytes | None]
    ) -> list[dict[str, Any]]:
        """Submit job specs (and pickled payloads) in one request; returns the jobs' records.

        A ``JobSpec`` was checked when it was made; a plain JSON object is sent
        as it is, for the server to check.
        """
        body = [s.to_json() if isinstance(s, JobSpec) else dict(s) for s in specs]
        # Always multipart: the descriptions as a field, each payload as a file part.
        files: dict[str, tuple] = {"specs": (None, json.dumps(body))}
        for i, p in enumerate(payloads):
            if p is not None:
                files[f"payload{i}"] = (f"payload{i}", p, "application/octet-stream")
        # Safe to repeat only when every spec carries an idempotency key (minted once, by the
        # caller, and sent unchanged on every attempt): the server then answers a repeat with
        # the jobs the first attempt made. A spec without one could make its job twice.
        keyed = all(s.get("idempotency_key") for s in body)
        return self.request("POST", "/api/v1/jobs", files=files, retry=keyed).json()["jobs"]

    def submit_many(
        self,
        jobs: Iterable[KottaJob | tuple],
        *,
        queue: str = d.QUEUE,
        walltime: float | str = d.WALLTIME_MIN,
        requirements: str | None = None,
        retries: int = 0,
        keep_days: float | None = None,
        chunk: int = 1000,
    ) -> list[KottaJob]:
        """Submit many jobs in a few requests; returns their ``KottaJob`` futures, in order.

        Each item is a ``KottaJob`` (a script job, or a python one made with
        ``KottaJob.call(fn, *args)`` / ``.with_call(...)``) or a python call as
        a tuple ``(fn, args)`` or ``(fn, args, kwargs)``; the keyword options
        (``keep_days``: days each job is kept after it ends, ``0`` for ever,
        ``None`` the server's ``--keep``; see ``KottaJob``) apply to the
        tuples, a ``KottaJob`` keeps its own. Up to ``chunk`` jobs go in one request, each with
        its own idempotency key, so a retried request never makes a job twice.

        >>> jobs = konn.submit_many([(inc, (i,)) for i in range(1000)], queue='Test', walltime=5)
        >>> konn.gather(jobs)[:3]
        [1, 2, 3]
        """
        out: list[KottaJob] = []
        for item in jobs:
            if not isinstance(item, KottaJob):
                fn, args, kwargs = (*item, {})[:3] if len(item) == 2 else item
                item = KottaJob(
                    jobtype="python", jobname=getattr(fn, "__name__", "function"), queue=queue,
                    walltime=walltime, requirements=requirements, retries=retries,
                    keep_days=keep_days,
                ).with_call(fn, *args, **kwargs)  # fmt: skip
            out.append(item)
        for i in range(0, len(out), chunk):
            part = out[i : i + chunk]
            sub = [_submission(j, n, len(out)) for n, j in enumerate(part, i)]
            infos = self.submit_specs([spec for spec, _ in sub], [payload for _, payload in sub])
            for j, info in zip(part, infos, strict=True):
                j.apply_record(info, self)
        return out

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        queue: str = d.QUEUE,
        walltime: float = d.WALLTIME_MIN,
        chunksize: int | None = None,
        requirements: str | None = None,
        retries: int = 0,
        keep_days: float | None = None,
    ) -> list[CallFuture]:
        """``fn(*args)`` for each ``args`` of ``zip(*iterables)``, packed into few jobs.

        Returns one ``CallFuture`` per call, in order; ``konn.gather(futures)``
        gives their values. A job costs milliseconds across the server and a
        worker, so calls go ``chunksize`` to a job (default: four jobs per slot
        of the queue, as ``multiprocessing.Pool.map`` sizes its chunks), and the
        options (``walltime`` included) are each job's. One call's exception is
        its own (with its remote traceback) and does not lose its neighbours'
        results; a job that fails as a whole (walltime, memory, cancelled) fails
        each of its calls, with a note naming them; ``retries`` retries such a
        job. All of a job's arguments travel in its payload: for large
        arguments, pass a smaller ``chunksize`` or stage them as inputs.

        >>> futures = konn.map(inc, range(100_000), queue='Test', walltime=5)
        >>> konn.gather(futures)[:3]
        [1, 2, 3]
        """
        return map_calls(
            self, fn, iterables, queue=queue, walltime=walltime, chunksize=chunksize,
            requirements=requirements, retries=retries, keep_days=keep_days,
        )  # fmt: skip

    def gather(
        self,
        jobs: Iterable[KottaJob],
        timeout: float | None = None,
        errors: str = "raise",
        *,
        progress: bool = False,
        on_error: str = "leave",
    ) -> list[Any]:
        """Wait for all the jobs and return their results, in order.

        Small results come with the records, so a batch costs a few requests,
        not two per job. ``errors='raise'`` (default) raises the error of the
        first job to fail (or be cancelled) as soon as it ends, not after the
        others; ``on_error`` then says what happens to the jobs still running:
        ``'leave'`` (default) lets them run, ``'cancel'`` cancels them (the
        error's notes say how many). ``errors='return'`` waits for all and puts
        each failed job's exception in its place. ``progress=True`` shows a bar
        on a terminal (stderr), and elsewhere a plain line every 30 s and one at
        the end. Raises ``JobTimeoutError`` if ``timeout`` seconds pass first.
        Ctrl-C cancels the jobs not yet ended and says so in one line.

        >>> results = konn.gather(jobs, progress=True, on_error='cancel')
        """
        return many.gather(self, jobs, timeout, errors, progress, on_error)

    def as_completed(
        self, jobs: Iterable[KottaJob], timeout: float | None = None, *, progress: bool = False
    ) -> Iterator[KottaJob]:
        """Yield each job as it ends (jobs already ended first), with its record up to date.

        ``job.get_results(konn)`` then answers at once (a small result came
        along). ``progress`` is as for :meth:`gather`; ``JobTimeoutError`` if
        ``timeout`` seconds pass before all ended. Ctrl-C while waiting cancels
        the jobs not yet ended and says so in one line.

        >>> for job in konn.as_completed(jobs):
        ...     print(job.id, job.get_results(konn))
        """
        return many.as_completed(self, jobs, timeout, progress)

    def job(self, job_id: str, wait: float = 0, result: bool = False) -> dict[str, Any]:
        """A job's record; with ``wait`` the server holds the answer until it ends (at most ``wait`` s).

        With ``result``, an ended python job's small result comes along (base64, ``"result"``).
        """
        path = f"/api/v1/jobs/{job_id}"
        flags = {"result": "true"} if result else {}
        if not wait:
            return self.request("GET", path, params=flags).json()
        return self._long_poll(
            wait,
            lambda h: self.request(
                "GET", path, params={"wait": h, **flags}, timeout=self.timeout + h, retry=False
            ),
        ).json()

    def wait_any(self, job_ids: list[str], timeout: float = 10.0) -> list[dict[str, Any]]:
        """Records of the jobs, as soon as at least one has ended (or after ``timeout`` s)."""
        r = self._long_poll(
            timeout,
            lambda h: self.request(
                "POST", "/api/v1/jobs/wait", json={"ids": job_ids, "timeout": h},
                timeout=self.timeout + h, retry=False,
            ),
        )  # fmt: skip
        return r.json()["jobs"]

    def jobs(
        self, limit: int = 50, status: str | None = None, queue: str | None = None,
        name: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Your newest ``limit`` jobs, newest first; ``status`` (a comma list, ``running``
        for the active ones), ``queue`` and ``name`` (a substring) filter them."""
        return self.jobs_page(limit, status, queue, name)[0]

    def jobs_page(
        self, limit: int = 50, status: str | None = None, queue: str | None = None,
        name: str | None = None, before: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:  # fmt: skip
        """One page of your jobs, newest first, and the cursor of the next page (None: the
        last); pass it as ``before`` for the following one."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("status", status), ("queue", queue), ("name", name),
                           ("before", before)):  # fmt: skip
            if value:
                params[key] = value
        body = self.request("GET", "/api/v1/jobs", params=params).json()
        return body["jobs"], body.get("next")

    def job_counts(self) -> dict[str, int]:
        """How many of your jobs are in each status."""
        return self.request("GET", "/api/v1/jobs/counts").json()["counts"]

    def read_log(self, job_id: str, stream: str = "stdout", offset: int = 0) -> LogChunk:
        """A job's ``stream`` (``"stdout"``/``"stderr"``) from ``offset``, even while it runs:
        ``LogChunk(data, size, final)``; read on from ``size`` until ``final``
        (``dask_kotta.client.logs.follow`` does)."""
        return read_log(self, job_id, stream, offset)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """A job's status history."""
        return self.request("GET", f"/api/v1/jobs/{job_id}/events").json()["events"]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; raises ``ConflictError`` if it already ended."""
        # Safe to repeat: a second cancel changes nothing (a repeat of one that landed answers
        # 409, as for any ended job).
        return self.request("POST", f"/api/v1/jobs/{job_id}/cancel", retry=True).json()

    def delete(self, jobs: KottaJob | str | Iterable[KottaJob | str]) -> None:
        """Delete ended jobs for good: their records, logs, outputs and results.

        Takes a job, a job id, or several. The server deletes every ended job
        itself after a time (``dask-kotta up --keep DAYS``, 30 days by default).
        Raises ``ConflictError`` for a job still pending or running (cancel it
        first) and ``NotFoundError`` for one that is not yours or not there;
        the jobs before it in the list are deleted by then.
        """
        if isinstance(jobs, (str, KottaJob)):
            jobs = [jobs]
        for job in jobs:
            job_id = job if isinstance(job, str) else job.job_id
            if not job_id:
                raise ValueError(f"{job!r} was never submitted: it has no job id to delete")
            self.request("DELETE", f"/api/v1/jobs/{job_id}")

    def links(self, job_id: str, names: Iterable[str] | None = None) -> Links:
        """Links to a job's outputs that open in a browser or with ``curl``, with no token,
        for a short time (10 minutes unless the server's ``--link-ttl`` says otherwise):
        ``{name: url}``, whose ``.expires`` is when they stop working (Unix seconds).

        ``names``: the outputs to link (``STDOUT.txt``/``STDERR.txt`` by name too); None:
        every output the job has. ``NotFoundError`` for a name it has not (or a job that is
        not yours). A link carries no token: anyone who has it can open it until it expires.
        """
        if isinstance(names, str):
            names = [names]
        body = {} if names is None else {"names": list(names)}
        # Safe to repeat: each call only signs new links.
        r = self.request("POST", f"/api/v1/jobs/{job_id}/links", json=body, retry=True).json()
        return Links(r["links"], expires=r["expires"])

    def resubmit(self, job: KottaJob | str) -> KottaJob:
        """Run an ended job of yours again, as a new job; returns its future.

        The server copies the job's description and payload; the new job's record says
        ``resubmit_of``. ``ConflictError`` while the job is pending or running,
        ``NotFoundError`` if it is not yours.
        """
        job_id = job if isinstance(job, str) else job.require_id()
        # One key for every attempt: a repeat after a lost answer gets the same new job.
        body = {"idempotency_key": uuid.uuid4().hex}
        r = self.request("POST", f"/api/v1/jobs/{job_id}/resubmit", json=body, retry=True)
        return KottaJob.from_record(r.json(), self)

    def download(
        self,
        job_id: str,
        names: Iterable[str] | None = None,
        directory: str | os.PathLike = ".",
        overwrite: bool = False,
    ) -> list[Path]:
        """Download an ended job's outputs (all, or ``names``; ``STDOUT.txt``/``STDERR.txt``
        by name too) into ``directory``, streaming; returns the paths written.

        Output ``sub/a.csv`` goes to ``directory/sub/a.csv``. Refused before anything is
        fetched: a job still pending or running (``JobError``), a name the job has no
        output under (``NotFoundError``), one that would land outside ``directory``
        (``UnsafePathError``), and, unless ``overwrite``, any file already there.
        """
        return download(self, job_id, names, directory, overwrite)

    def result_bytes(self, job_id: str) -> bytes:
        """The pickled result of a python job."""
        return self.request("GET", f"/api/v1/jobs/{job_id}/result").content

    def upload_file(self, path: str | Path, name: str | None = None) -> str:
        """Store a local file for your jobs; returns a URL to use in ``inputs=``.

        On an S3 store the bytes go straight to S3 by presigned URLs (in
        parallel parts when large) and the URL is ``s3://...`` under your
        prefix; on a local store they stream to this server and the URL is
        the server's. Only your jobs can stage it.

        Raises ``PayloadTooLargeError`` (413) for a file over the server's
        ``--max-upload`` and ``LimitExceededError`` (429) when it would take you
        over your storage quota (``--max-storage``), each with the server's reason,
        before a byte is sent.
        """
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as e:
            raise KottaError(f"cannot upload {path}: {e.strerror or e}") from None
        if not p.is_file():
            raise KottaError(f"cannot upload {path}: not a regular file")
        info = self.request(
            "POST", "/api/v1/uploads", json={"name": name or p.name, "size": size}
        ).json()
        url, plan = info["url"], info["plan"]

        def finish(upload_id: str, etags: list[str], abort: bool = False) -> None:
            body = {"url": url, "upload_id": upload_id, "etags": etags, "abort": abort}
            self.request("POST", "/api/v1/uploads/complete", json=body)

        with http_session() as session:
            try:
                send_file(
                    p, size, plan, what=f"upload of {p}", session=session,
                    server_put=lambda f: self._put_file(plan["url"], f),
                    complete=finish, abort=lambda upload_id: finish(upload_id, [], True),
                )  # fmt: skip
            except StagingError as e:
                raise ServerUnavailableError(str(e)) from None
        return url

    def delete_upload(self, url: str) -> None:
        """Delete a file you stored with :meth:`upload_file`, by the URL it returned.

        Its room in your storage quota is free at once; jobs that already staged
        it keep their copy. ``NotFoundError`` if it is not there (or not yours).
        """
        self.request("DELETE", "/api/v1/uploads", params={"url": url})

    def check_destinations(self, urls: Sequence[str]) -> None:
        """Check that jobs of yours may write each ``s3://bucket/key`` of ``urls``, before any runs.

        Raises what a submit declaring them as ``destinations`` would: ``ForbiddenError``
        (403) naming the first place no write grant of yours covers (the operator's
        ``s3_write_grants``; a read grant does not count) or one inside the service's
        store, ``InvalidRequestError`` (400) for a malformed one. Makes no job.
        """
        for i in range(0, len(urls), 10_000):
            body = {"urls": list(urls[i : i + 10_000])}
            self.request("POST", "/api/v1/destinations/check", json=body, retry=True)

    def _put_file(self, url: str, f: BinaryIO) -> None:
        # A PUT of the whole file to its one URL is safe to repeat, from the file's start.
        def attempt() -> requests.Response:
            f.seek(0)
            return self.request("PUT", url, data=f, retry=False)

        self.retry.run(attempt)

    def queues(self) -> dict[str, dict[str, Any]]:
        """The server's queues and their limits."""
        return self.request("GET", "/api/v1/queues").json()


def _submission(job: KottaJob, n: int, of: int) -> tuple[JobSpec, bytes | None]:
    """The job's spec and payload; a refusal names the job's place when there are several."""
    try:
        return job.submission()
    except InvalidRequestError as e:
        if of == 1:
            raise
        raise InvalidRequestError(f"job {n}: {e}") from None


def _short(e: Exception) -> str:
    text = str(e)
    if "Connection refused" in text:
        return "connection refused (is the server running?)"
    return text[:300]
