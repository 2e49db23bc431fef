"""``KottaJob``: a job description that, once submitted, behaves as a future."""

from __future__ import annotations

import base64
import time
import uuid
from typing import TYPE_CHECKING, Any

from .. import defaults as d
from ..errors import (
    ConflictError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    KottaError,
)
from ..jobspec import JobSpec
from ..paths import split_list
from .interrupt import cancel_on_interrupt
from .kout import KOut
from .serialize import dumps_call, loads_result, versions

if TYPE_CHECKING:  # annotations only: at run time the client imports connection -> job -> kout
    from .connection import Kotta

_DOCUMENTED = {
    "inputs": "",
    "outputs": "",
    "walltime": d.WALLTIME_MIN,
    "queue": d.QUEUE,
    "output_file_stdout": "STDOUT.txt",
    "output_file_stderr": "STDERR.txt",
    "jobtype": "script",
    "jobname": "",
    "script": None,
    "script_name": None,
    "executable": None,
}
_EXTRA = {"requirements": None, "retries": 0, "keep_days": None, "annotations": None,
          "args": None}  # fmt: skip


class KottaJob:
    """A Kotta job: a script (``jobtype='script'``) or a python function.

    Keyword arguments (all optional): ``inputs`` (comma-separated URLs),
    ``outputs`` (comma-separated relative paths), ``walltime`` (minutes,
    default 300; fractions allowed; or ``'HH:MM:SS'``/``'MM:SS'``), ``queue`` (``'Test'`` or ``'Prod'``),
    ``output_file_stdout`` / ``output_file_stderr`` (default ``STDOUT.txt`` /
    ``STDERR.txt``), ``jobtype``, ``jobname``, ``script`` (the script's text),
    ``script_name`` (its file name on the worker), ``executable`` (the command
    line to run, e.g. ``'/bin/bash myscript.sh'``), ``args`` (a list of strings
    passed to a script job's script or executable), ``requirements``
    (requirements.txt text), ``retries`` and ``keep_days``: days the job (its
    record, logs, outputs and result) is kept after it ends, then deleted;
    fractions allowed, ``0`` keeps it for ever, ``None`` (default) follows the
    server's ``--keep`` (30 days unless its operator says otherwise).

    >>> job = KottaJob(jobname='hello', executable='/bin/bash myscript.sh',
    ...                script_name='myscript.sh', script='#!/bin/bash\\n echo "Hello World!"')
    >>> job.submit(konn)
    True
    """

    def __init__(self, **kwargs: Any):
        unknown = set(kwargs) - set(_DOCUMENTED) - set(_EXTRA)
        if unknown:
            raise TypeError(
                f"KottaJob got unknown keyword(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join([*_DOCUMENTED, *_EXTRA])}"
            )
        self._desc: dict[str, Any] = {**_DOCUMENTED, **_EXTRA, **kwargs}
        if self._desc["jobtype"] not in d.JOBTYPES:
            raise KottaError(
                f"jobtype {self._desc['jobtype']!r} is not one of {', '.join(d.JOBTYPES)}"
            )
        self.job_id: str | None = None
        self._info: dict[str, Any] = {}
        self._status: str = d.UNSUBMITTED
        self._konn: Kotta | None = None
        self._payload: bytes | None = None  # a python call's pickle, until submitted
        self._result: bytes | None = None  # the pickled result, when it came with the record

    def __repr__(self) -> str:
        name = f" {self.jobname!r}" if self.jobname else ""
        return f"<KottaJob{name} id={self.job_id or '-'} status={self._status}>"

    # -- description ----------------------------------------------------------------------

    @property
    def desc(self) -> dict[str, Any]:
        """The job's description (the keyword arguments it was made with, and defaults)."""
        return dict(self._desc)

    @property
    def jobname(self) -> str:
        """The job's user-friendly name."""
        return self._desc.get("jobname") or ""

    @property
    def id(self) -> str | None:
        """The server's id for this job, once submitted."""
        return self.job_id

    @property
    def info(self) -> dict[str, Any]:
        """The last job record read from the server (status, reason, timings, outputs...)."""
        return dict(self._info)

    @property
    def reason(self) -> str:
        """Why the job failed or was cancelled, as last seen."""
        return self._info.get("reason", "")

    @property
    def outputs(self) -> list[KOut]:
        """The job's outputs as ``KOut`` objects, STDOUT and STDERR included (as last seen)."""
        return [
            KOut(
                o["url"],
                konn=self._konn,
                name=o["name"],
                store_url=o.get("store_url"),
                size=o.get("size"),
            )
            for o in self._info.get("outputs", [])
        ]

    def spec(self) -> JobSpec:
        """The description as a checked ``JobSpec``; ``InvalidRequestError`` names what is wrong."""
        desc = self._desc
        return JobSpec.parse(
            {
                "jobtype": desc["jobtype"],
                "name": desc["jobname"] or "",
                "queue": desc["queue"],
                "walltime_min": desc["walltime"],
                "inputs": split_list(desc["inputs"]),
                "outputs": split_list(desc["outputs"]),
                "stdout": desc["output_file_stdout"],
                "stderr": desc["output_file_stderr"],
                "script": desc["script"],
                "script_name": desc["script_name"],
                "executable": desc["executable"],
                "args": desc["args"],
                "requirements": desc["requirements"],
                "retries": desc["retries"],
                "keep_days": desc["keep_days"],
                "annotations": desc["annotations"],
                "client": versions() if desc["jobtype"] == "python" else None,
            }
        )

    def to_spec(self) -> dict[str, Any]:
        """The description as the server's API takes it (a JSON object)."""
        return self.spec().to_json()

    # -- the future -----------------------------------------------------------------------

    def submit(self, konn: Kotta) -> bool:
        """Submit the job. Returns True; a refused submission raises a ``KottaError`` saying why."""
        konn.submit_many([self])
        return True

    def submission(self) -> tuple[JobSpec, bytes | None]:
        """What submitting this job sends: its spec, with a fresh idempotency key, and its payload.

        Raises ``ConflictError`` if it was submitted already, ``KottaError`` if
        it is a script job with neither ``script=`` nor ``executable=``, and
        ``InvalidRequestError`` for any other mistake in its description.
        """
        if self.job_id is not None:
            raise ConflictError(f"this KottaJob was already submitted as job {self.job_id}")
        if self._desc["jobtype"] == "script" and not (
            self._desc["script"] or self._desc["executable"]
        ):
            raise KottaError("a script job needs script= or executable=")
        spec = self.spec().model_copy(update={"idempotency_key": uuid.uuid4().hex})
        return spec, self._payload

    def apply_record(self, record: dict[str, Any], konn: Kotta) -> None:
        """Take the job's record as the server sent it (after a submit, a status read or a wait).

        The first record makes this the server's job ``record["id"]`` (its
        payload is then dropped); a small result in the record (``"result"``,
        base64) is kept, so ``get_results`` needs no further request.
        """
        if self.job_id is None:
            self.job_id = record["id"]
        if "result" in record:
            record = dict(record)
            self._result = base64.b64decode(record.pop("result"))
        self._payload = None
        self._info = record
        self._status = record["status"]
        self._konn = konn

    @classmethod
    def call(cls, fn: Any, *args: Any, **kwargs: Any) -> KottaJob:
        """A python job that runs ``fn(*args, **kwargs)``, with default options.

        For options, build it as ``KottaJob(jobtype='python', queue=..., walltime=...)``
        and attach the call with :meth:`with_call`.
        """
        return cls(jobtype="python", jobname=getattr(fn, "__name__", "function")).with_call(
            fn, *args, **kwargs
        )

    def with_call(self, fn: Any, *args: Any, **kwargs: Any) -> KottaJob:
        """Make this (python) job run ``fn(*args, **kwargs)``; returns the job."""
        if self._desc["jobtype"] != "python":
            raise KottaError("only a jobtype='python' job runs a function")
        self._payload = dumps_call(fn, args, kwargs)
        return self

    def require_id(self) -> str:
        """The server's id for this job; ``KottaError`` if it has not been submitted."""
        if self.job_id is None:
            raise KottaError(
                "this KottaJob has not been submitted yet; call job.submit(konn) first"
            )
        return self.job_id

    def status(self, konn: Kotta) -> str:
        """One of 'unsubmitted', 'pending', 'staging_inputs', 'processing', 'staging_outputs',
        'completed', 'failed', 'cancelled'."""
        if self.job_id is None:
            return d.UNSUBMITTED
        self.apply_record(konn.job(self.job_id), konn)
        return self._status

    @property
    def last_status(self) -> str:
        """The status last seen (no request is made; ``status(konn)`` asks the server)."""
        return self._status

    def done(self) -> bool:
        """True once the last seen status is terminal (no request is made)."""
        return self._status in d.TERMINAL_STATUSES

    def wait(
        self,
        konn: Kotta,
        maxwait: float = 600,
        sleep: float = 2,
        silent: bool = True,
        _result: bool = False,
    ) -> bool:
        """Wait up to ``maxwait`` seconds for the job to end; True if it ended.

        The server holds each request until the job ends (long-poll), so the end
        is seen at once; ``sleep`` is the longest a single request is held
        before a status line is printed (with ``silent=False``). Ctrl-C while
        waiting cancels the job and says so in one line, then raises
        ``KeyboardInterrupt``.
        """
        job_id = self.require_id()
        deadline = time.monotonic() + maxwait
        last = None
        with cancel_on_interrupt(konn, [self]):
            while True:
                left = deadline - time.monotonic()
                hold = max(0.0, min(left, max(sleep, 0.5) if not silent else d.LONGPOLL_MAX_S))
                self.apply_record(konn.job(job_id, wait=hold, result=_result), konn)
                if not silent and self._status != last:
                    print(f"Job {job_id}: {self._status}")
                    last = self._status
                if self._status in d.TERMINAL_STATUSES:
                    return True
                if left <= 0:
                    return False

    def cancel(self, konn: Kotta) -> bool:
        """Cancel the job: True if this call cancelled it, False if it had already ended."""
        job_id = self.require_id()
        try:
            self.apply_record(konn.cancel_job(job_id), konn)
            return True
        except ConflictError:
            self.apply_record(konn.job(job_id), konn)
            return False

    def get_results(self, konn: Kotta, timeout: float | None = None) -> Any:
        """Wait for the job and return its result.

        A python job returns its function's value, or raises the function's
        exception with the remote traceback. A script job returns its outputs.
        A failed job raises ``JobFailedError`` with the reason, a cancelled one
        ``JobCancelledError``, and ``JobTimeoutError`` if ``timeout`` seconds pass.
        """
        job_id = self.require_id()
        python = self._desc["jobtype"] == "python"
        # An ended job's record is final: no need to ask again (e.g. after Kotta.gather).
        if not self.done() and not self.wait(
            konn, maxwait=float("inf") if timeout is None else timeout, _result=python
        ):
            raise JobTimeoutError(
                f"job {job_id} did not end within {timeout} s (status {self._status})", job_id
            )
        if self._status == d.CANCELLED:
            raise JobCancelledError(f"job {job_id} was cancelled", job_id)
        if python and self._info.get("has_result"):
            # A small result came with the record; a large one is fetched on its own.
            data = self._result if self._result is not None else konn.result_bytes(job_id)
            return loads_result(data, job_id)
        if self._status == d.FAILED:
            raise JobFailedError(f"job {job_id} failed: {self.reason}", job_id)
        if self._desc["jobtype"] == "python":
            raise JobFailedError(f"job {job_id} completed without a result", job_id)
        return self.outputs

    def resubmit(self, konn: Kotta) -> KottaJob:
        """Run this ended job again, as a new job with the same description and payload;
        returns the new job's future (its ``info["resubmit_of"]`` is this job's id).

        ``ConflictError`` while this job is pending or running.
        """
        new = konn.resubmit(self.require_id())
        new._desc = dict(self._desc)
        return new

    @classmethod
    def attach(cls, konn: Kotta, job_id: str) -> KottaJob:
        """A ``KottaJob`` for a job submitted earlier (by id)."""
        return cls.from_record(konn.job(job_id), konn)

    @classmethod
    def from_record(cls, info: dict[str, Any], konn: Kotta) -> KottaJob:
        """A ``KottaJob`` for the job a record (as the server sends it) describes."""
        job = cls(
            jobtype=info["jobtype"],
            jobname=info["name"],
            queue=info["queue"],
            walltime=info["walltime_min"],
            keep_days=info.get("keep_days"),
        )
        job.apply_record(info, konn)
        return job
