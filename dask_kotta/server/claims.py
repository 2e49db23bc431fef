"""What the service does for runners: claims, leases, phases, and the ends of attempts.

A runner names its attempt with the job id, the attempt number and the
attempt's dispatch token (:class:`Attempt`); it can only touch that job, and
only while that attempt holds the lease. One that lost the job (cancelled,
requeued) gets ``ConflictError`` (409) and stops. A slot (see ``engine.py``)
claims the next jobs of a queue and reports the ends of the ones it ran in one
call, :func:`next_jobs`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import defaults as d
from ..claim import Claim
from ..errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from ..jobspec import bad_text
from ..paths import safe_relpath
from ..store.attempts import EndReport
from ..store.blobs import SMALL_MAX
from ..store.objects import LocalObjectStore, job_key
from .auth import hash_token
from .inputs import input_plan
from .models import Finish, NextBody
from .queues import limit_advice
from .service import Service


@dataclass(frozen=True)
class Attempt:
    """One attempt at a job, as its runner names it; ``token_hash`` hashes its dispatch token."""

    job_id: str
    attempt: int
    token_hash: str


def held(s: Service, a: Attempt) -> dict[str, Any]:
    """The job ``a`` is an attempt at, while that attempt holds it; ``ConflictError`` otherwise."""
    job = s.store.runner_job(a.job_id, a.attempt, a.token_hash)
    if job is None:
        raise ConflictError(f"attempt {a.attempt} no longer holds job {a.job_id}")
    return job


def claim(s: Service, a: Attempt, worker: str) -> Claim:
    """Take the lease of a dispatched job for attempt ``a`` and say what to run."""
    job = s.store.claim(a.job_id, a.attempt, a.token_hash, s.config.lease_s, worker)
    if job is None:
        raise ConflictError(f"job {a.job_id} attempt {a.attempt} cannot be claimed")
    s.changed(a.job_id)
    return claim_info(s, job)


def claim_info(s: Service, job: dict[str, Any]) -> Claim:
    """What a runner needs to know about a job it has just claimed."""
    queue = s.queues[job["queue"]]
    spec = job["spec"]
    return {
        "id": job["id"],
        "attempt": job["attempt"],
        "jobtype": job["jobtype"],
        "walltime_s": job["walltime_min"] * 60.0,
        "memory_bytes": queue.memory_bytes,
        "vcpus": queue.vcpus,
        "heartbeat_s": s.config.heartbeat_s,
        "inputs": spec.get("inputs", []),
        "input_plan": input_plan(s, job),
        "outputs": spec.get("outputs", []),
        "destinations": spec.get("destinations") or {},
        "stdout": spec["stdout"],
        "stderr": spec["stderr"],
        "script": spec.get("script"),
        "script_name": spec.get("script_name"),
        "executable": spec.get("executable"),
        "args": spec.get("args") or [],
        "requirements": spec.get("requirements"),
        "client": spec.get("client") or {},
        "has_payload": bool(spec.get("has_payload")),
        "deps": spec.get("deps") or [],
        "retries_left": job["retries"] - job["failures"],
        "contain": "optional" if s.config.allow_uncontained else "required",
        # Small files and results may ride with the end (base64) into a local store.
        "local_store": isinstance(s.objects.inner, LocalObjectStore),
        "inline_max": d.INLINE_MAX_BYTES,
        # A result this small rides with the end on any store: it is kept in the database.
        "result_inline_max": SMALL_MAX,
        **queue.sandbox(),
    }


def heartbeat(s: Service, a: Attempt) -> None:
    """Renew the lease of attempt ``a``; ``ConflictError`` once it no longer holds the job."""
    if not s.store.heartbeat(a.job_id, a.attempt, a.token_hash, s.config.lease_s):
        raise ConflictError(f"attempt {a.attempt} no longer holds job {a.job_id}")


def advance(s: Service, a: Attempt, status: str) -> None:
    """Move the job to the next phase (``processing``, ``staging_outputs``)."""
    if not s.store.advance(a.job_id, a.attempt, a.token_hash, status, s.config.lease_s):
        raise ConflictError(f"job {a.job_id} cannot move to {status!r} from attempt {a.attempt}")
    s.changed(a.job_id)


def payload_key(job: dict[str, Any]) -> str:
    """The store key of a python job's pickled call."""
    return job_key(job["owner"], job["id"], d.PAYLOAD_OBJECT)


def result_key(job: dict[str, Any]) -> str:
    """The store key of a python job's pickled result (or exception)."""
    return job_key(job["owner"], job["id"], d.RESULT_OBJECT)


def dep_result_key(s: Service, job: dict[str, Any], dep_id: str) -> str:
    """The key of the result of ``dep_id``, a job that ``job`` lists in its ``deps``.

    This is how a Dask task's large intermediate reaches the job that needs it
    without passing through the client.
    """
    if dep_id not in (job["spec"].get("deps") or []):
        raise ForbiddenError(f"job {dep_id} is not listed in job {job['id']}'s deps")
    dep = s.store.get(dep_id, owner=job["owner"])
    if dep is None or not dep["has_result"]:
        raise NotFoundError(f"dependency job {dep_id} has no result")
    return job_key(job["owner"], dep_id, d.RESULT_OBJECT)


def _decoded(body: Finish) -> tuple[dict[str, bytes], bytes | None]:
    """The inline files and result of a finish, decoded (``UnsafePathError`` for a bad name)."""
    try:
        files = {
            safe_relpath(n, "output"): base64.b64decode(data, validate=True)
            for n, data in body.files.items()
        }
        result = None if body.result is None else base64.b64decode(body.result, validate=True)
    except (binascii.Error, ValueError) as e:  # ValueError: a character that is not ASCII
        raise InvalidRequestError(f"inline files and result must be base64: {e}") from None
    return files, result


def record_ends(s: Service, ends: list[tuple[str, int, str, Finish]]) -> list[str | None]:
    """Record the ends of attempts ``(job_id, attempt, dispatch_hash, body)``, in one transaction.

    Inline files and results are written first, and only for attempts that
    still hold their job, so a stale runner never overwrites the current
    one's. Returns each new status, None where the attempt no longer holds
    the job.
    """
    decoded = [_decoded(body) for *_, body in ends]

    def write_files(job: dict[str, Any], i: int) -> list[dict[str, Any]]:
        files, result = decoded[i]
        if result is not None:
            files = {**files, d.RESULT_OBJECT: result}
        kept: list[tuple[str, bytes | None]] = []
        for name, data in files.items():
            key = job_key(job["owner"], job["id"], name)
            if s.objects.keeps(key, data):
                kept.append((key, data))  # a row of the end's transaction
            else:
                s.objects.inner.put_bytes(key, data)
                if s.objects.eligible(key):
                    kept.append((key, None))  # an earlier attempt's row must not shadow it
        return s.objects.blobs.rows(kept)

    reports = [
        EndReport(
            job_id=job_id,
            attempt=attempt,
            dispatch_hash=h,
            ok=b.ok,
            reason=_advised(s, job_id, b),
            traceback=b.traceback,
            timings=b.timings,
            outputs=b.outputs,
            has_result=b.has_result,
            retry=b.retry,
            requeue=b.requeue,
            phases=[(p.status, p.at) for p in b.phases],
        )  # fmt: skip
        for job_id, attempt, h, b in ends
    ]
    ended = s.store.finish_many(reports, before=write_files, max_requeues=s.config.max_requeues)
    for job in ended:
        if job is None:
            continue
        if job["status"] == d.PENDING:  # a retry, or a requeue
            s.engine.dispatch(job["id"], job["queue"])
            s.changed(job["id"])
        else:
            s.finished(job)
    return [job["status"] if job else None for job in ended]


def _advised(s: Service, job_id: str, body: Finish) -> str:
    """The reason to record: a kill at a limit also names the limit and what allows more."""
    if body.ok or body.reason not in (d.KILLED_WALLTIME, d.KILLED_MEMORY):
        return body.reason
    job = s.store.get(job_id)  # only for these failures: a read per killed job
    if job is None:
        return body.reason
    advice = limit_advice(body.reason, job["queue"], job["walltime_min"], s.queues)
    return advice or body.reason


def finish(s: Service, a: Attempt, body: Finish) -> str:
    """Record how attempt ``a`` ended; the job's new status (``pending`` for a retry)."""
    status = record_ends(s, [(a.job_id, a.attempt, a.token_hash, body)])[0]
    if status is None:
        raise ConflictError(f"attempt {a.attempt} no longer holds job {a.job_id}")
    return status


async def next_jobs(
    s: Service,
    slot_token: str | None,
    queue: str,
    body: NextBody | None,
    wait: float,
    worker: str,
    limit: int,
    gone: Callable[[], Awaitable[bool]],
) -> dict[str, Any]:
    """A slot reports the jobs it ended and claims the next ones of ``queue``.

    Records the ends in ``body.done`` (each authorised by its own attempt's
    dispatch token), renews the leases of ``body.waiting`` (claimed jobs the
    slot has not started; those it no longer holds come back in ``lost``),
    then claims up to ``limit`` of the oldest pending jobs, long-polling up to
    ``wait`` s when none is pending (``gone`` says the slot hung up: stop). A
    slot gets at most its share of the pending jobs (pending / the queue's
    slots), so a batch never leaves other slots idle. Returns ``{"done":
    [status or None per report], "lost": [job id, ...], "jobs": [claim, ...]}``;
    each claim carries its attempt's dispatch token and, if small, the payload
    inline. ``AuthenticationError`` tells a slot of an earlier server process to end.
    """
    if slot_token is None or not s.engine.slot_token_ok(slot_token):
        raise AuthenticationError("unknown slot token (the server restarted): this slot ends")
    if queue not in s.queues:
        raise NotFoundError(f"no queue {queue!r}")
    done = body.done if body else []
    ends: list[tuple[str, int, str, Finish]] = [
        (r.id, r.attempt, hash_token(r.token), r) for r in done
    ]
    statuses = record_ends(s, ends) if done else []
    waiting = [(w.id, w.attempt, hash_token(w.token)) for w in body.waiting] if body else []
    lost = s.store.renew(waiting, s.config.lease_s) if waiting else []
    want = min(limit, d.MAX_CLAIM)
    if want > 1:
        slots = s.engine.slot_count(queue)
        pending = s.store.pending_count(queue, want * slots)
        want = max(1, min(want, -(-pending // slots)))  # its share, rounded up; 1 to wait on
    deadline = time.monotonic() + min(max(wait, 0.0), d.LONGPOLL_MAX_S)
    claimed: list[tuple[dict[str, Any], str]] = []
    while want > 0:
        tokens = [secrets.token_urlsafe(24) for _ in range(want)]
        by_hash = {hash_token(t): t for t in tokens}
        jobs = s.store.claim_next(queue, list(by_hash), s.config.lease_s, worker)
        if jobs:
            claimed = [(j, by_hash[j["dispatch_hash"]]) for j in jobs]
            break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await s.engine.wait_for_work(queue, left)
        if s.notifier.closed or await gone():
            break  # stopping, or nobody to hand a job to: leave it pending
    out, unsendable = [], []
    # The payloads kept in the database, in one read for the batch.
    payloads = s.objects.small_bytes(
        [payload_key(job) for job, _ in claimed if job["spec"].get("has_payload")]
    )
    for job, dispatch in claimed:
        s.changed(job["id"])
        info = claim_info(s, job)
        if problem := bad_text(info):
            # Stored before text was checked at submit: fails alone, not every batch it is in.
            why = f"this job cannot be sent to a worker: its {problem}"
            unsendable.append((job["id"], job["attempt"], hash_token(dispatch),
                               Finish(ok=False, retry=False, reason=why)))  # fmt: skip
            continue
        info["token"] = dispatch
        if info["has_payload"]:
            data = payloads.get(payload_key(job))
            if data is None:  # a large one, in a local store, up to INLINE_MAX_BYTES rides too
                path = s.objects.inner.local_path(payload_key(job))
                if path is not None and path.stat().st_size <= d.INLINE_MAX_BYTES:
                    data = path.read_bytes()
            if data is not None:
                info["payload"] = base64.b64encode(data).decode()
        out.append(info)
    if unsendable:
        record_ends(s, unsendable)
    return {"done": statuses, "lost": lost, "jobs": out}
