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

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
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
    # A slot's runner folds a short job's phases and small files into this one call.
    phases: list[PassedPhase] = []
    files: dict[str, str] = {}  # output name -> base64
    result: str | None = None  # base64 of the pickled result


@router.post("/finish")
async def finish(request: Request, a: Auth, body: Finish) -> dict:
    # On the event loop, not the thread pool: a handful of short store and file calls cost
    # less than the hand-off, and the client waiting on this job is woken on the same loop.
    s = svc(request)
    if body.files or body.result is not None:
        job = _held(request, a)  # a stale runner must not overwrite the current one's files
        prefix = job_prefix(job["owner"], job["id"])
        try:
            named = {safe_relpath(n, "output"): data for n, data in body.files.items()}
            for name, data in named.items():
                s.objects.put_bytes(f"{prefix}/{name}", base64.b64decode(data, validate=True))
            if body.result is not None:
                s.objects.put_bytes(
                    f"{prefix}/{d.RESULT_OBJECT}", base64.b64decode(body.result, validate=True)
                )
        except (UnsafePathError, binascii.Error) as e:
            raise HTTPException(400, str(e)) from None
    status = s.store.finish(
        a.job_id, a.attempt, a.token_hash, body.ok, body.reason, body.traceback,
        body.timings, body.outputs, body.has_result, body.retry,
        phases=[(p.status, p.at) for p in body.phases],
    )  # fmt: skip
    if status is None:
        raise HTTPException(409, f"attempt {a.attempt} no longer holds job {a.job_id}")
    job = s.store.get(a.job_id)
    if status == d.PENDING:
        s.engine.dispatch(job["id"], job["queue"])
        s.changed(a.job_id)
    else:
        s.finished(job)
    return {"status": status}


# -- slots: the fast dispatch (see engine.py) -------------------------------------------------

#: Payloads and files up to this size ride inside the claim and the finish.
INLINE_MAX = 1024 * 1024


async def next_job(request: Request, queue: str, wait: float = 10.0, worker: str = "") -> Any:
    """Claim the oldest pending job of ``queue`` for a slot; long-polls up to ``wait`` s.

    Answers the claim (with the attempt's dispatch token and, if small, the
    payload inline) or 204 if none came. 401 tells a slot of an earlier server
    process to end.
    """
    from ..store.objects import LocalObjectStore

    s = svc(request)
    token = bearer(request.headers.get("authorization"))
    if token is None or not s.engine.slot_token_ok(token):
        raise HTTPException(401, "unknown slot token (the server restarted): this slot ends")
    if queue not in s.queues:
        raise HTTPException(404, f"no queue {queue!r}")
    deadline = time.monotonic() + min(max(wait, 0.0), d.LONGPOLL_MAX_S)
    while True:
        dispatch = secrets.token_urlsafe(24)
        job = s.store.claim_next(queue, hash_token(dispatch), s.config.lease_s, worker)
        if job is not None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=204)
        await s.engine.wait_for_work(queue, left)
        if await request.is_disconnected():
            return Response(status_code=204)  # nobody to hand a job to: leave it pending
    s.changed(job["id"])
    info = claim_info(s, job)
    info["token"] = dispatch
    info["local_store"] = isinstance(s.objects, LocalObjectStore)
    info["inline_max"] = INLINE_MAX
    if info["has_payload"]:
        path = s.objects.local_path(f"{job_prefix(job['owner'], job['id'])}/{d.PAYLOAD_OBJECT}")
        if path is not None and path.stat().st_size <= INLINE_MAX:
            info["payload"] = base64.b64encode(path.read_bytes()).decode()
    return info


# Its path is not under one job's prefix, so it joins the /api/v1 router.
api_router.add_api_route(
    "/runner/next", next_job, methods=["POST"], summary="A slot takes the next job of a queue"
)
