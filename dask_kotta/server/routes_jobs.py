"""The user API: submit, look at, wait for, download from, cancel and delete your own jobs.

Another user's job answers exactly like a missing one (404). Each route reads
the request and calls ``jobs``; refusals are domain errors that ``app``
answers with.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .. import defaults as d
from ..errors import InvalidRequestError, PayloadTooLargeError
from . import jobs
from .deps import User, bounded_form, serve, svc
from .inputs import own_hosts
from .models import WaitBody
from .openapi import BYTES, SUBMIT_BODY, for_user
from .routes_listing import slots_now, views_with_places
from .views import job_view

router = APIRouter(prefix="/api/v1")


def _view(request: Request, job: dict[str, Any]) -> dict[str, Any]:
    return job_view(job, str(request.base_url), svc(request).objects)


@router.get("/whoami", summary="The user a token belongs to", responses=for_user())
def whoami(user: User) -> dict:
    return {"id": user["id"], "name": user["name"]}


@router.get("/queues", summary="Queues and their limits", responses=for_user())
async def queues(request: Request, user: User) -> dict:
    """Each queue's limits; ``slots``: how many of its jobs the cluster runs at once now;
    ``yours``: your jobs ``running`` and ``pending`` in it; ``busy`` and ``pending``: every
    user's jobs running and pending in it (counts only). A free slot goes to the user with
    the fewest running jobs in the queue (ties: the older job), so another user's backlog
    does not hold yours back."""
    s = svc(request)
    slots = await slots_now(request) or {}  # the scheduler unreachable: limits still answer
    # Off the event loop, as the listing's reads: every user's load is a count per queue.
    mine = await run_in_threadpool(s.store.queue_counts, user["id"])
    load = await run_in_threadpool(s.store.queue_load, s.queues)
    return {
        name: {**q.to_json(), "slots": slots.get(name, 0),
               "yours": mine.get(name, {"running": 0, "pending": 0}),
               **load.get(name, {"busy": 0, "pending": 0})}
        for name, q in s.queues.items()
    }  # fmt: skip


async def _read_submission(request: Request) -> list[tuple[dict[str, Any], bytes | None]]:
    """The job descriptions of a multipart submit, each with its payload (or None)."""
    limit = svc(request).config.max_payload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 1024 * 1024:
        raise PayloadTooLargeError(
            f"request of {int(length)} bytes is over the limit of {limit} bytes"
        )
    form = await bounded_form(request, limit)
    try:
        raw = form.get("specs")
        if not isinstance(raw, str):  # missing, or sent as a file
            raise InvalidRequestError(
                "missing form field 'specs' (a JSON list of job descriptions)", 422
            )
        specs = json.loads(raw)
        if not isinstance(specs, list) or not specs:
            raise InvalidRequestError("'specs' must be a non-empty JSON list", 422)
        out = []
        for i, spec in enumerate(specs):
            upload = form.get(f"payload{i}")
            payload = (
                await upload.read() if upload is not None and hasattr(upload, "read") else None
            )
            if payload is not None and len(payload) > limit:
                raise PayloadTooLargeError(
                    f"payload of job {i} is {len(payload)} bytes, over the limit of {limit}"
                )
            out.append((spec, payload))
        return out
    except json.JSONDecodeError as e:
        raise InvalidRequestError(f"'specs' is not valid JSON: {e}", 422) from None
    finally:
        await form.close()


@router.post(
    "/jobs",
    status_code=201,
    summary="Submit one or more jobs",
    responses=for_user(400, 404, 413, 422, 429),
    openapi_extra=SUBMIT_BODY,
)
async def submit(request: Request, user: User) -> dict:
    """Multipart form: ``specs`` (JSON list of job descriptions) and ``payload<i>`` files.

    A description with an ``idempotency_key`` already used by this user returns
    the job made the first time instead of a new one.
    """
    s = svc(request)
    items = await _read_submission(request)
    rows = await jobs.submit(s, user, items, own_hosts(s, request.url.netloc))
    # As stored: a created job is pending, and one made before by the same key reads as then.
    return {"jobs": [_view(request, j) for j, _ in rows], "created": [c for _, c in rows]}


@router.get(
    "/jobs/{job_id}", summary="One job; ?wait=S long-polls until it ends", responses=for_user(404)
)
async def get_job(
    request: Request,
    user: User,
    job_id: str,
    wait: float = Query(0, ge=0),
    result: bool = Query(False, description="Include a small result (base64) once ended"),
) -> dict:
    s = svc(request)
    job = (
        (await jobs.wait(s, user["id"], [job_id], wait, any_=False))[0]
        if wait
        else jobs.own_job(s, user["id"], job_id)
    )
    view = (await views_with_places(request, user["id"], [job]))[0]
    if result:
        inline = jobs.inline_results(s, [job])
        if job_id in inline:
            view["result"] = inline[job_id]
    return view


@router.post(
    "/jobs/wait",
    summary="Long-poll until any (or all) of the jobs end",
    responses=for_user(404),
)
async def wait_any(request: Request, user: User, body: WaitBody) -> dict:
    s = svc(request)
    ended = await jobs.wait(s, user["id"], body.ids, body.timeout, any_=not body.all)
    if body.ended_only:
        ended = [j for j in ended if j["status"] in d.TERMINAL_STATUSES]
    out: dict[str, Any] = {"jobs": [_view(request, j) for j in ended]}
    if body.results:
        out["results"] = jobs.inline_results(s, ended)
    return out


@router.get("/jobs/{job_id}/events", summary="A job's status history", responses=for_user(404))
def events(request: Request, user: User, job_id: str) -> dict:
    s = svc(request)
    jobs.own_job(s, user["id"], job_id)
    return {"events": s.store.events(job_id)}


@router.get(
    "/jobs/{job_id}/result",
    summary="A python job's pickled result (or exception)",
    response_class=Response,
    responses={**for_user(404), **BYTES},
)
def result(request: Request, user: User, job_id: str) -> Response:
    return serve(request, jobs.result_key(svc(request), user["id"], job_id), "result.pkl")


@router.get(
    "/jobs/{job_id}/files/{name:path}",
    summary="One of a job's outputs",
    response_class=Response,
    responses={**for_user(400, 404), **BYTES},
)
def output_file(request: Request, user: User, job_id: str, name: str) -> Response:
    key, filename = jobs.output_key(svc(request), user["id"], job_id, name)
    return serve(request, key, filename)


@router.post(
    "/jobs/{job_id}/cancel", summary="Cancel a pending or running job", responses=for_user(404, 409)
)
async def cancel(request: Request, user: User, job_id: str) -> dict:
    return _view(request, await jobs.cancel(svc(request), user["id"], job_id))


@router.delete(
    "/jobs/{job_id}",
    summary="Delete an ended job: its record, history and files",
    status_code=204,
    response_class=Response,
    responses=for_user(404, 409),
)
def delete(request: Request, user: User, job_id: str) -> Response:
    jobs.delete(svc(request), user["id"], job_id)
    return Response(status_code=204)


@router.get("/health", summary="Liveness, without auth")
async def health() -> dict:
    await asyncio.sleep(0)
    return {"ok": True}
