"""Live logs over HTTP: a user reads a job's STDOUT/STDERR as it runs; its runner sends them.

``GET /api/v1/jobs/{id}/logs/{stream}?offset=N`` answers the stream's bytes
from ``N`` as ``text/plain`` with ``X-Kotta-Log-Size`` (where the stream has
reached: ask from there next) and ``X-Kotta-Log-Final`` (``1`` once it will
not grow). ``PUT /api/v1/runner/jobs/{id}/logs/{stream}?offset=N`` is the
runner's side. What is kept, and for how long, is ``logs.py``'s.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import defaults as d
from ..errors import PayloadTooLargeError
from . import logs
from .deps import Auth, BodyTooLarge, User, spool, svc
from .models import MAX_INT
from .openapi import BYTES_BODY, for_runner, for_user

router = APIRouter()

_HEADERS: dict[str, Any] = {
    "X-Kotta-Log-Size": {
        "description": "Bytes of the stream the server has had so far: the offset to ask from next",
        "required": True,
        "schema": {"type": "integer"},
    },
    "X-Kotta-Log-Final": {
        "description": "`1` once the job has ended and the log will not grow, else `0`",
        "required": True,
        "schema": {"type": "string", "enum": ["0", "1"]},
    },
}
_TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The log's bytes from `offset` to what the server holds now (may be "
        "empty); where the live log was cut, a line saying how much",
        "headers": _HEADERS,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
#: The most bytes one runner request may carry: a runner sends at most the tail's worth.
MAX_CHUNK = d.LIVE_LOG_HEAD_BYTES + d.LIVE_LOG_TAIL_BYTES


@router.get(
    "/api/v1/jobs/{job_id}/logs/{stream}",
    summary="A job's STDOUT or STDERR so far, from an offset",
    response_class=Response,
    responses={**for_user(404), **_TEXT},
)
def read_log(
    request: Request,
    user: User,
    job_id: str,
    stream: str,
    offset: int = Query(0, ge=0, le=MAX_INT),
) -> Response:
    """``stream`` is ``stdout`` or ``stderr``. Follow a log by asking again from
    ``X-Kotta-Log-Size`` until ``X-Kotta-Log-Final`` is ``1``."""
    got = logs.read(svc(request), user["id"], job_id, stream, offset)
    headers = {"X-Kotta-Log-Size": str(got.size), "X-Kotta-Log-Final": "1" if got.final else "0"}
    media = "text/plain; charset=utf-8"
    if isinstance(got.body, bytes):
        return Response(got.body, media_type=media, headers=headers)
    return StreamingResponse(got.body, media_type=media, headers=headers)


@router.put(
    "/api/v1/runner/jobs/{job_id}/logs/{stream}",
    summary="A runner sends its job's new output",
    responses=for_runner(404, 413),
    openapi_extra=BYTES_BODY,
)
async def put_log(
    request: Request,
    a: Auth,
    stream: str,
    offset: int = Query(ge=0, le=MAX_INT),
    final: bool = False,
) -> dict:
    """The body is the stream's bytes from ``offset``; ``final``: the runner sends no more."""
    try:
        body = await spool(request, MAX_CHUNK)
    except BodyTooLarge as e:
        raise PayloadTooLargeError(
            f"a log chunk of over {e.received} bytes: at most {MAX_CHUNK} per request"
        ) from None
    with body:
        data = body.read()
    # Off the event loop: it rewrites up to the bound's bytes in the store (S3: a request).
    size = await run_in_threadpool(logs.append, svc(request), a, stream, offset, data, final)
    return {"size": size}
