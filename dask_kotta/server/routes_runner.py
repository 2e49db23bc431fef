"""The runner API: what a runner on a dask worker may do for the one job it was given.

A runner authenticates with the dispatch token of its attempt (never a user's
token) and can only touch that job, and only while its attempt holds the lease.
A runner that lost the job (cancelled, requeued) gets 409 and stops. A slot
asks ``/runner/next`` for jobs with the server's slot secret instead. Each
route calls ``claims`` or ``files``; refusals are domain errors that ``app``
answers with.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import Response

from . import claims, destinations, files
from .auth import bearer
from .deps import BEARER, Auth, PathInt, serve, spool, svc
from .models import MAX_INT, Finish, NextBody, Phase, PlansBody, RunnerCompleteBody
from .openapi import BYTES, BYTES_BODY, errors, for_runner

router = APIRouter(prefix="/api/v1/runner")
JOB = "/jobs/{job_id}"


@router.post(
    "/next", summary="A slot reports ends and takes jobs", responses=errors(400, 401, 404, 503)
)
async def next_job(
    request: Request,
    queue: str,
    wait: float = 10.0,
    worker: str = "",
    limit: int = Query(1, alias="max", ge=0, le=MAX_INT),
    body: NextBody | None = None,
    _: Annotated[Any, Security(BEARER)] = None,
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
    token = bearer(request.headers.get("authorization"))
    return await claims.next_jobs(
        svc(request), token, queue, body, wait, worker, limit, request.is_disconnected
    )


@router.post(JOB + "/claim", responses=for_runner())
def claim(request: Request, a: Auth, worker: str = "") -> dict:
    # A plain dict to FastAPI: a TypedDict return would become a response schema.
    return dict(claims.claim(svc(request), a, worker))


@router.get(JOB + "/payload", response_class=Response, responses={**for_runner(), **BYTES})
def payload(request: Request, a: Auth) -> Response:
    job = claims.held(svc(request), a)
    return serve(request, claims.payload_key(job), "payload.pkl")


@router.get(
    JOB + "/deps/{dep_id}/result",
    response_class=Response,
    responses={**for_runner(403, 404), **BYTES},
)
def dep_result(request: Request, a: Auth, dep_id: str) -> Response:
    """The result of a job this one depends on: same owner, and listed in this job's ``deps``.

    This is how a Dask task's large intermediate reaches the job that needs it
    without passing through the client.
    """
    s = svc(request)
    return serve(request, claims.dep_result_key(s, claims.held(s, a), dep_id), "result.pkl")


@router.post(JOB + "/heartbeat", responses=for_runner())
def heartbeat(request: Request, a: Auth) -> dict:
    claims.heartbeat(svc(request), a)
    return {"continue": True}


@router.post(JOB + "/phase", responses=for_runner())
def phase(request: Request, a: Auth, body: Phase) -> dict:
    claims.advance(svc(request), a, body.status)
    return {"status": body.status}


# 404: no route takes a name with a line break ({name:path} is ".*"), so such a PUT is
# Starlette's "Not Found" (the long fuzz found it).
@router.put(JOB + "/files/{name:path}", responses=for_runner(400, 404), openapi_extra=BYTES_BODY)
async def put_file(request: Request, a: Auth, name: str) -> dict:
    s = svc(request)
    key, name = files.runner_file_key(claims.held(s, a), name)
    with await spool(request) as f:
        size = s.objects.put_stream(key, f)
    return {"name": name, "size": size}


@router.put(JOB + "/result", responses=for_runner(), openapi_extra=BYTES_BODY)
async def put_result(request: Request, a: Auth) -> dict:
    s = svc(request)
    key = claims.result_key(claims.held(s, a))
    with await spool(request) as f:
        size = s.objects.put_stream(key, f)
    return {"size": size}


@router.post(JOB + "/finish", responses=for_runner(400))
async def finish(request: Request, a: Auth, body: Finish) -> dict:
    # On the event loop, not the thread pool: a handful of short store and file calls cost
    # less than the hand-off, and the client waiting on this job is woken on the same loop.
    return {"status": claims.finish(svc(request), a, body)}


@router.get(
    JOB + "/inputs/{index}",
    summary="One input of the job, from the store",
    response_class=Response,
    responses={**for_runner(403, 404), **BYTES},
)
def runner_input(request: Request, a: Auth, job_id: str, index: PathInt) -> Response:
    s = svc(request)
    key = files.runner_input_key(s, claims.held(s, a), index)
    return serve(request, key, key.rsplit("/", 1)[-1])


@router.post(JOB + "/uploads", summary="How to upload each output", responses=for_runner(400, 403))
def runner_upload_plans(request: Request, a: Auth, body: PlansBody) -> dict:
    s = svc(request)
    job = claims.held(s, a)
    return {
        "plans": [
            s.objects.upload_plan(files.declared_output_key(job, f.name), f.size)
            for f in body.files
        ]
    }


@router.post(
    JOB + "/destinations",
    summary="How to write each declared destination",
    responses=for_runner(400, 403, 413),
)
def runner_destination_plans(request: Request, a: Auth, body: PlansBody) -> dict:
    """A presigned PUT of each file's size to its declared, granted ``s3://`` place; 403 for
    a name the job did not declare, or whose write grant is gone (``server/destinations.py``)."""
    s = svc(request)
    job = claims.held(s, a)
    files_ = [(f.name, f.size) for f in body.files]
    return {"plans": destinations.destination_plans(s, job, files_)}


@router.post(
    JOB + "/uploads/complete", summary="Finish a multipart output", responses=for_runner(400, 403)
)
def runner_complete(request: Request, a: Auth, body: RunnerCompleteBody) -> dict:
    s = svc(request)
    key = files.declared_output_key(claims.held(s, a), body.name)
    files.complete(s, key, body.upload_id, body.etags, body.abort)
    return {"name": body.name}
