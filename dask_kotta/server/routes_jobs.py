"""The user API: submit, look at, wait for, download from and cancel your own jobs.

Another user's job answers exactly like a missing one (404).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

from .. import defaults as d
from ..errors import APIError, UnsafePathError
from ..paths import safe_relpath
from ..store.objects import job_prefix
from .auth import bearer, hash_token
from .service import Service
from .validate import check_spec, input_host_refusals
from .views import job_view

router = APIRouter(prefix="/api/v1")


def svc(request: Request) -> Service:
    return request.app.state.svc


def current_user(request: Request) -> dict:
    token = bearer(request.headers.get("authorization"))
    if token is None:
        raise HTTPException(401, "missing or malformed 'Authorization: Bearer <token>' header")
    s = svc(request)
    user = s.user_for_token_hash(hash_token(token))
    if user is None:
        raise HTTPException(
            401, "unknown token: make a new credentials file with 'dask-kotta token NAME'"
        )
    if s.config.single_user is not None and user["name"] != s.config.single_user:
        raise HTTPException(
            403,
            f"jobs on this service are not contained ({s.config.uncontained}), so it serves "
            "only the user who started it; the operator can make containment work, or start "
            "it with --allow-uncontained to run every user's jobs uncontained",
        )
    return user


User = Annotated[dict, Depends(current_user)]


def _own(request: Request, user: dict, job_id: str) -> dict[str, Any]:
    job = svc(request).store.get(job_id, owner=user["id"])
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


def _view(request: Request, job: dict[str, Any]) -> dict[str, Any]:
    return job_view(job, str(request.base_url), svc(request).objects)


@router.get("/whoami", summary="The user a token belongs to")
def whoami(user: User) -> dict:
    return {"id": user["id"], "name": user["name"]}


@router.get("/queues", summary="Queues and their limits")
async def queues(request: Request, user: User) -> dict:
    """Each queue's limits, and ``slots``: how many of its jobs the cluster runs at once now."""
    s = svc(request)
    try:
        slots = await s.engine.capacity()
    except Exception:  # the scheduler is unreachable: limits still answer
        slots = {}
    return {name: {**q.to_json(), "slots": slots.get(name, 0)} for name, q in s.queues.items()}


async def _read_submission(request: Request) -> list[tuple[dict, bytes | None]]:
    s = svc(request)
    limit = s.config.max_payload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 1024 * 1024:
        raise HTTPException(
            413, f"request of {int(length)} bytes is over the limit of {limit} bytes"
        )
    form = await request.form(max_files=100_000, max_fields=100_000, max_part_size=limit)
    try:
        raw = form.get("specs")
        if raw is None:
            raise HTTPException(422, "missing form field 'specs' (a JSON list of job descriptions)")
        specs = json.loads(raw)
        if not isinstance(specs, list) or not specs:
            raise HTTPException(422, "'specs' must be a non-empty JSON list")
        out = []
        for i, spec in enumerate(specs):
            upload = form.get(f"payload{i}")
            payload = (
                await upload.read() if upload is not None and hasattr(upload, "read") else None
            )
            if payload is not None and len(payload) > limit:
                raise HTTPException(
                    413, f"payload of job {i} is {len(payload)} bytes, over the limit of {limit}"
                )
            out.append((spec, payload))
        return out
    except json.JSONDecodeError as e:
        raise HTTPException(422, f"'specs' is not valid JSON: {e}") from None
    finally:
        await form.close()


@router.post("/jobs", status_code=201, summary="Submit one or more jobs")
async def submit(request: Request, user: User) -> dict:
    """Multipart form: ``specs`` (JSON list of job descriptions) and ``payload<i>`` files.

    A description with an ``idempotency_key`` already used by this user returns
    the job made the first time instead of a new one.
    """
    s = svc(request)
    items = await _read_submission(request)
    specs = []
    for i, (raw, payload) in enumerate(items):
        try:
            spec = check_spec(raw, s.queues, payload is not None)
            # 403 for an input in another user's part of the store or in an ungranted bucket
            input_keys, granted = _place_inputs(s, user, spec["inputs"], request)
        except APIError as e:
            prefix = f"job {i}: " if len(items) > 1 else ""
            raise HTTPException(
                e.status, prefix + str(e).removesuffix(f" (HTTP {e.status})")
            ) from None
        if input_keys:
            spec["input_keys"] = input_keys
        if granted:
            spec["granted_inputs"] = granted
        spec["has_payload"] = payload is not None
        specs.append(spec)
    # http(s) inputs other than the service's own must not lead into the service's network.
    refused = await input_host_refusals(
        (
            (i, url)
            for i, spec in enumerate(specs)
            for j, url in enumerate(spec["inputs"])
            if str(j) not in spec.get("input_keys", {})
        ),
        list(s.policy.allow_input_networks),
    )
    if refused is not None:
        i, why = refused
        raise HTTPException(400, (f"job {i}: " if len(items) > 1 else "") + why)
    payloads = [payload for _, payload in items]

    def write_payloads(rows: list[tuple[dict, bool]]) -> None:
        for (job, created), payload in zip(rows, payloads, strict=True):
            if created and payload is not None:
                key = f"{job_prefix(user['id'], job['id'])}/{d.PAYLOAD_OBJECT}"
                s.objects.put_bytes(key, payload)

    rows = s.store.insert_jobs(user["id"], specs, before_commit=write_payloads)
    for job, created in rows:
        if created:
            s.engine.dispatch(job["id"], job["queue"])
    # As stored: a created job is pending, and one made before by the same key reads as then.
    jobs = [job for job, _ in rows]
    return {"jobs": [_view(request, j) for j in jobs], "created": [c for _, c in rows]}


def _place_inputs(s: Service, user: dict, urls: list[str], request: Request):
    from .routes_files import place_inputs  # routes_files builds on this module

    return place_inputs(s, user, urls, request)


@router.get("/jobs", summary="Your jobs, newest first")
def list_jobs(
    request: Request, user: User, limit: int = Query(50, ge=1, le=10_000), status: str | None = None
) -> dict:
    jobs = svc(request).store.list(user["id"], limit=limit, status=status)
    return {"jobs": [_view(request, j) for j in jobs]}


async def _wait(
    request: Request, user: dict, ids: list[str], timeout: float, any_: bool
) -> list[dict]:
    s = svc(request)
    deadline = time.monotonic() + min(max(timeout, 0.0), d.LONGPOLL_MAX_S)
    want = list(dict.fromkeys(ids))
    ended: dict[str, dict] = {}  # a terminal record never changes again: read it once
    while True:
        todo = [i for i in want if i not in ended]
        jobs = s.store.get_many(todo, user["id"]) if todo else []
        if len(jobs) != len(todo):
            missing = sorted(set(todo) - {j["id"] for j in jobs})
            raise HTTPException(404, f"no job {missing[0]!r}")
        live = {}
        for j in jobs:
            (ended if j["status"] in d.TERMINAL_STATUSES else live)[j["id"]] = j
        left = deadline - time.monotonic()
        if (ended if any_ else not live) or left <= 0:
            return [ended.get(i) or live[i] for i in want]
        # Any: wake on any of them. All: on the last one still running (jobs mostly end in
        # the order they were submitted), so a batch of thousands is re-read a few times,
        # not once per job that ends.
        running = [i for i in want if i in live]
        await s.notifier.wait(running if any_ else running[-1:], min(left, 1.0))


def _inline_results(s: Service, jobs: list[dict]) -> dict[str, str]:
    """Base64 of the small results of ended jobs, where the object store is local."""
    import base64

    out = {}
    for j in jobs:
        if j["status"] in d.TERMINAL_STATUSES and j["has_result"]:
            path = s.objects.local_path(f"{job_prefix(j['owner'], j['id'])}/{d.RESULT_OBJECT}")
            if path is not None and path.stat().st_size <= d.INLINE_MAX_BYTES:
                out[j["id"]] = base64.b64encode(path.read_bytes()).decode()
    return out


@router.get("/jobs/{job_id}", summary="One job; ?wait=S long-polls until it ends")
async def get_job(
    request: Request,
    user: User,
    job_id: str,
    wait: float = Query(0, ge=0),
    result: bool = Query(False, description="Include a small result (base64) once ended"),
) -> dict:
    job = (
        (await _wait(request, user, [job_id], wait, any_=False))[0]
        if wait
        else _own(request, user, job_id)
    )
    view = _view(request, job)
    if result:
        inline = _inline_results(svc(request), [job])
        if job_id in inline:
            view["result"] = inline[job_id]
    return view


class WaitBody(BaseModel):
    ids: list[str] = Field(..., min_length=1, max_length=10_000)
    timeout: float = Field(10.0, ge=0)
    all: bool = Field(False, description="Wait until all of them ended, not any")
    results: bool = Field(False, description="Include small results (base64) of ended jobs")


@router.post("/jobs/wait", summary="Long-poll until any (or all) of the jobs end")
async def wait_any(request: Request, user: User, body: WaitBody) -> dict:
    jobs = await _wait(request, user, body.ids, body.timeout, any_=not body.all)
    out: dict[str, Any] = {"jobs": [_view(request, j) for j in jobs]}
    if body.results:
        out["results"] = _inline_results(svc(request), jobs)
    return out


@router.get("/jobs/{job_id}/events", summary="A job's status history")
def events(request: Request, user: User, job_id: str) -> dict:
    _own(request, user, job_id)
    return {"events": svc(request).store.events(job_id)}


def _serve(request: Request, key: str, filename: str):
    objects = svc(request).objects
    url = objects.presigned_get(key)
    if url:
        return RedirectResponse(url, status_code=307)
    path = objects.local_path(key)
    if path is not None:
        return FileResponse(path, filename=filename, media_type="application/octet-stream")
    return StreamingResponse(objects.open_read(key), media_type="application/octet-stream")


@router.get("/jobs/{job_id}/result", summary="A python job's pickled result (or exception)")
def result(request: Request, user: User, job_id: str):
    job = _own(request, user, job_id)
    if not job["has_result"]:
        raise HTTPException(404, f"job {job_id} has no result (status {job['status']})")
    return _serve(request, f"{job_prefix(user['id'], job_id)}/{d.RESULT_OBJECT}", "result.pkl")


@router.get("/jobs/{job_id}/files/{name:path}", summary="One of a job's outputs")
def output_file(request: Request, user: User, job_id: str, name: str):
    job = _own(request, user, job_id)
    try:
        name = safe_relpath(name, "output")
    except UnsafePathError as e:
        raise HTTPException(400, str(e)) from None
    if name not in {o["name"] for o in job["outputs"]}:
        raise HTTPException(404, f"job {job_id} has no output {name!r} (status {job['status']})")
    return _serve(request, f"{job_prefix(user['id'], job_id)}/{name}", name.rsplit("/", 1)[-1])


@router.post("/jobs/{job_id}/cancel", summary="Cancel a pending or running job")
async def cancel(request: Request, user: User, job_id: str) -> dict:
    s = svc(request)
    job = _own(request, user, job_id)
    if not s.store.cancel(job_id, user["id"]):
        job = s.store.get(job_id)
        raise HTTPException(
            409, f"job {job_id} already ended as {job['status']}; nothing was changed"
        )
    await s.engine.cancel(job_id)
    job = s.store.get(job_id)
    s.finished(job)
    return _view(request, job)


@router.get("/health", summary="Liveness, without auth")
async def health() -> dict:
    await asyncio.sleep(0)
    return {"ok": True}
