"""The runner API: what a runner on a dask worker may do for the one job it was given.

A runner authenticates with the dispatch token of its attempt (never a user's
token) and can only touch that job, and only while its attempt holds the lease.
A runner that lost the job (cancelled, requeued) gets 409 and stops.
"""

from __future__ import annotations

import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from pydantic import BaseModel

from .. import defaults as d
from ..errors import UnsafePathError
from ..paths import safe_relpath
from ..store.objects import job_prefix
from .auth import bearer, hash_token
from .routes_jobs import _serve, svc

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
        "outputs": spec.get("outputs", []),
        "stdout": spec["stdout"],
        "stderr": spec["stderr"],
        "script": spec.get("script"),
        "script_name": spec.get("script_name"),
        "executable": spec.get("executable"),
        "requirements": spec.get("requirements"),
        "client": spec.get("client") or {},
        "has_payload": bool(spec.get("has_payload")),
        "retries_left": job["retries"] - job["failures"],
    }


@router.get("/payload")
def payload(request: Request, a: Auth):
    job = _held(request, a)
    return _serve(
        request, f"{job_prefix(job['owner'], job['id'])}/{d.PAYLOAD_OBJECT}", "payload.pkl"
    )


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


class Finish(BaseModel):
    ok: bool
    reason: str = ""
    traceback: str = ""
    timings: dict[str, float | None] = {}
    outputs: list[dict[str, Any]] = []
    has_result: bool = False
    retry: bool = True


@router.post("/finish")
def finish(request: Request, a: Auth, body: Finish) -> dict:
    s = svc(request)
    status = s.store.finish(
        a.job_id, a.attempt, a.token_hash, body.ok, body.reason, body.traceback,
        body.timings, body.outputs, body.has_result, body.retry,
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
