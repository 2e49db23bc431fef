"""The runner API: what a runner on a dask worker may do for the one job it was given.

A runner authenticates with the dispatch token of its attempt (never a user's
token) and can only touch that job, and only while its attempt holds the lease.
A runner that lost the job (cancelled, requeued) gets 409 and stops.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import tempfile
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from pydantic import BaseModel

from .. import defaults as d
from ..errors import UnsafePathError
from ..paths import safe_relpath
from ..store.objects import job_prefix
from .auth import bearer, hash_token
from .routes_jobs import _serve, svc
from .routes_jobs import router as api_router

router = APIRouter(prefix="/api/v1/runner/jobs/{job_id}")


class Attempt:
    def __init__(self, job_id: str, attempt: int, token_hash: str):
        self.job_id, self.attempt, self.token_hash = job_id, attempt, token_hash


def runner_auth(
    request: Request, job_id: str, x_kotta_attempt: Annotated[int, Header()]
) -> Attempt:
    token = bearer(request.headers.get("authorization"))
    if token is None:
        raise HTTPException(401, "missing dispatch token")
    return Attempt(job_id, x_kotta_attempt, hash_token(token))


Auth = Annotated[Attempt, Depends(runner_auth)]


def _held(request: Request, a: Attempt) -> dict[str, Any]:
    job = svc(request).store.runner_job(a.job_id, a.attempt, a.token_hash)
    if job is None:
        raise HTTPException(409, f"attempt {a.attempt} no longer holds job {a.job_id}")
    return job


@router.post("/claim")
def claim(request: Request, a: Auth, worker: str = "") -> dict:
    s = svc(request)
    job = s.store.claim(a.job_id, a.attempt, a.token_hash, s.config.lease_s, worker)
    if job is None:
        raise HTTPException(409, f"job {a.job_id} attempt {a.attempt} cannot be claimed")
    s.changed(a.job_id)
    return claim_info(s, job)


def claim_info(s, job: dict[str, Any]) -> dict[str, Any]:
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
        "input_plan": _input_plan(s, job),
        "outputs": spec.get("outputs", []),
        "stdout": spec["stdout"],
        "stderr": spec["stderr"],
        "script": spec.get("script"),
        "script_name": spec.get("script_name"),
        "executable": spec.get("executable"),
        "requirements": spec.get("requirements"),
        "client": spec.get("client") or {},
        "has_payload": bool(spec.get("has_payload")),
        "deps": spec.get("deps") or [],
        "retries_left": job["retries"] - job["failures"],
        "contain": "optional" if s.config.allow_uncontained else "required",
        **queue.sandbox(),
    }


def _input_plan(s, job: dict) -> list[dict]:
    from .routes_files import input_plan  # routes_files builds on this module

    return input_plan(s, job)


@router.get("/payload")
def payload(request: Request, a: Auth):
    job = _held(request, a)
    return _serve(
        request, f"{job_prefix(job['owner'], job['id'])}/{d.PAYLOAD_OBJECT}", "payload.pkl"
    )


@router.get("/deps/{dep_id}/result")
def dep_result(request: Request, a: Auth, dep_id: str):
    """The result of a job this one depends on: same owner, and listed in this job's ``deps``.

    This is how a Dask task's large intermediate reaches the job that needs it
    without passing through the client.
    """
    job = _held(request, a)
    if dep_id not in (job["spec"].get("deps") or []):
        raise HTTPException(403, f"job {dep_id} is not listed in job {a.job_id}'s deps")
    dep = svc(request).store.get(dep_id, owner=job["owner"])
    if dep is None or not dep["has_result"]:
        raise HTTPException(404, f"dependency job {dep_id} has no result")
    return _serve(request, f"{job_prefix(job['owner'], dep_id)}/{d.RESULT_OBJECT}", "result.pkl")


@router.post("/heartbeat")
def heartbeat(request: Request, a: Auth) -> dict:
    s = svc(request)
    if not s.store.heartbeat(a.job_id, a.attempt, a.token_hash, s.config.lease_s):
        raise HTTPException(409, f"attempt {a.attempt} no longer holds job {a.job_id}")
    return {"continue": True}


class Phase(BaseModel):
    status: str


@router.post("/phase")
def phase(request: Request, a: Auth, body: Phase) -> dict:
    s = svc(request)
    if not s.store.advance(a.job_id, a.attempt, a.token_hash, body.status, s.config.lease_s):
        raise HTTPException(
            409, f"job {a.job_id} cannot move to {body.status!r} from attempt {a.attempt}"
        )
    s.changed(a.job_id)
    return {"status": body.status}


async def _spool(request: Request):
    # Spool the body so a large output never sits whole in the server's memory.
    f = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    async for chunk in request.stream():
        f.write(chunk)
    f.seek(0)
    return f


@router.put("/files/{name:path}")
async def put_file(request: Request, a: Auth, name: str) -> dict:
    job = _held(request, a)
    try:
        name = safe_relpath(name, "output")
    except UnsafePathError as e:
        raise HTTPException(400, str(e)) from None
    with await _spool(request) as f:
        size = svc(request).objects.put_stream(f"{job_prefix(job['owner'], job['id'])}/{name}", f)
    return {"name": name, "size": size}


@router.put("/result")
async def put_result(request: Request, a: Auth) -> dict:
    job = _held(request, a)
    with await _spool(request) as f:
        size = svc(request).objects.put_stream(
            f"{job_prefix(job['owner'], job['id'])}/{d.RESULT_OBJECT}", f
        )
    return {"size": size}


class PassedPhase(BaseModel):
    status: str
    at: float


class Finish(BaseModel):
    ok: bool
    reason: str = ""
    traceback: str = ""
    timings: dict[str, float | None] = {}
    outputs: list[dict[str, Any]] = []
    has_result: bool = False
    retry: bool = True
    # Lost to the runner's side (its fork server died): requeue, as for a lost worker.
    requeue: bool = False
    # A slot's runner folds a short job's phases and small files into this one call.
    phases: list[PassedPhase] = []
    files: dict[str, str] = {}  # output name -> base64
    result: str | None = None  # base64 of the pickled result


class Claimed(BaseModel):
    """An attempt a slot holds, named with its own dispatch token."""

    id: str
    attempt: int
    token: str


class Report(Finish, Claimed):
    """A finish that rides with a slot's next request; its own dispatch token authorises it."""


def _decoded(body: Finish) -> tuple[dict[str, bytes], bytes | None]:
    """The inline files and result of a finish, decoded; 400 for a bad name or base64."""
    try:
        files = {
            safe_relpath(n, "output"): base64.b64decode(data, validate=True)
            for n, data in body.files.items()
        }
        result = None if body.result is None else base64.b64decode(body.result, validate=True)
    except (UnsafePathError, binascii.Error) as e:
        raise HTTPException(400, str(e)) from None
    return files, result


def _record(s, ends: list[tuple[str, int, str, Finish]]) -> list[str | None]:
    """Record the ends of attempts ``(job_id, attempt, dispatch_hash, body)``, in one transaction.

    Inline files and results are written first, and only for attempts that
    still hold their job, so a stale runner never overwrites the current
    one's. Returns each new status, None where the attempt no longer holds
    the job.
    """
    decoded = [_decoded(body) for *_, body in ends]

    def write_files(job: dict[str, Any], report: dict[str, Any]) -> None:
        files, result = decoded[report["index"]]
        prefix = job_prefix(job["owner"], job["id"])
        for name, data in files.items():
            s.objects.put_bytes(f"{prefix}/{name}", data)
        if result is not None:
            s.objects.put_bytes(f"{prefix}/{d.RESULT_OBJECT}", result)

    reports = [
        dict(
            index=i,
            job_id=job_id,
            attempt=attempt,
            dispatch_hash=h,
            ok=b.ok,
            reason=b.reason,
            traceback=b.traceback,
            timings=b.timings,
            outputs=b.outputs,
            has_result=b.has_result,
            retry=b.retry,
            requeue=b.requeue,
            phases=[(p.status, p.at) for p in b.phases],
        )
        for i, (job_id, attempt, h, b) in enumerate(ends)
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
    return [job and job["status"] for job in ended]


@router.post("/finish")
async def finish(request: Request, a: Auth, body: Finish) -> dict:
    # On the event loop, not the thread pool: a handful of short store and file calls cost
    # less than the hand-off, and the client waiting on this job is woken on the same loop.
    status = _record(svc(request), [(a.job_id, a.attempt, a.token_hash, body)])[0]
    if status is None:
        raise HTTPException(409, f"attempt {a.attempt} no longer holds job {a.job_id}")
    return {"status": status}


# -- slots: the fast dispatch (see engine.py) -------------------------------------------------


class NextBody(BaseModel):
    done: list[Report] = []
    waiting: list[Claimed] = []  # claimed and not started yet: renew, or say they are lost


async def next_job(
    request: Request,
    queue: str,
    wait: float = 10.0,
    worker: str = "",
    limit: int = Query(1, alias="max", ge=0),
    body: NextBody | None = None,
) -> Any:
    """A slot reports the jobs it ended and claims the next ones of ``queue``.

    Records the ends in ``body.done`` (each authorised by its own attempt's
    dispatch token), renews the leases of ``body.waiting`` (claimed jobs the
    slot has not started; those it no longer holds come back in ``lost``),
    then claims up to ``max`` (query) of the oldest pending jobs,
    long-polling up to ``wait`` s when none is pending. A slot gets at most
    its share of the pending jobs (pending / the queue's slots), so a batch
    never leaves other slots idle. Answers ``{"done": [status or null per
    report], "lost": [job id, ...], "jobs": [claim, ...]}``; each claim carries its attempt's
    dispatch token and, if small, the payload inline. 401 tells a slot of an
    earlier server process to end.
    """
    from ..store.objects import LocalObjectStore

    s = svc(request)
    token = bearer(request.headers.get("authorization"))
    if token is None or not s.engine.slot_token_ok(token):
        raise HTTPException(401, "unknown slot token (the server restarted): this slot ends")
    if queue not in s.queues:
        raise HTTPException(404, f"no queue {queue!r}")
    done = body.done if body else []
    statuses = _record(s, [(r.id, r.attempt, hash_token(r.token), r) for r in done]) if done else []
    waiting = [(w.id, w.attempt, hash_token(w.token)) for w in body.waiting] if body else []
    lost = s.store.renew(waiting, s.config.lease_s) if waiting else []
    want = min(limit, d.MAX_CLAIM)
    if want > 1:
        slots = s.engine.slot_count(queue)
        pending = s.store.pending_count(queue, want * slots)
        want = max(1, min(want, -(-pending // slots)))  # its share, rounded up; 1 to wait on
    deadline = time.monotonic() + min(max(wait, 0.0), d.LONGPOLL_MAX_S)
    claimed: list[tuple[dict, str]] = []
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
        if await request.is_disconnected():
            break  # nobody to hand a job to: leave it pending
    local = isinstance(s.objects, LocalObjectStore)
    out = []
    for job, dispatch in claimed:
        s.changed(job["id"])
        info = claim_info(s, job)
        info["token"] = dispatch
        info["local_store"] = local
        info["inline_max"] = d.INLINE_MAX_BYTES
        if info["has_payload"]:
            path = s.objects.local_path(f"{job_prefix(job['owner'], job['id'])}/{d.PAYLOAD_OBJECT}")
            if path is not None and path.stat().st_size <= d.INLINE_MAX_BYTES:
                info["payload"] = base64.b64encode(path.read_bytes()).decode()
        out.append(info)
    return {"done": statuses, "lost": lost, "jobs": out}


# Its path is not under one job's prefix, so it joins the /api/v1 router.
api_router.add_api_route(
    "/runner/next", next_job, methods=["POST"], summary="A slot reports ends and takes jobs"
)
