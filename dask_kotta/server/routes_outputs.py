"""Getting outputs out and running a job again: download links, and resubmit.

``POST /jobs/{id}/links`` (with the user's token) answers links to the job's outputs
that open with no token until they expire (``links``); ``GET /dl/{signed}`` opens one.
``POST /jobs/{id}/resubmit`` runs an ended job again as a new job (``rerun``).
Refusals are domain errors that ``app`` answers with.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from . import links, rerun
from .deps import User, attachment, svc
from .inputs import own_hosts
from .models import LinksBody, ResubmitBody
from .openapi import BYTES, errors, for_user
from .views import job_view

router = APIRouter(prefix="/api/v1")

#: A link's answer is for one person, once: no cache keeps it, no page it leads to learns it.
_PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@router.post(
    "/jobs/{job_id}/links",
    summary="Links to a job's outputs that open without a token, until they expire",
    responses=for_user(400, 404),
)
def make_links(request: Request, user: User, job_id: str, body: LinksBody | None = None) -> dict:
    """``{"links": {name: url}, "expires": unix_seconds}``: each URL opens in a browser or with
    ``curl``, with no ``Authorization`` header, until ``expires`` (``--link-ttl``, 10 minutes
    by default), for the named outputs (``names``) or every output the job has."""
    names = body.names if body is not None else None
    return links.make_links(svc(request), user["id"], job_id, names, str(request.base_url))


@router.get(
    links.ROUTE.removeprefix("/api/v1") + "/{signed}",
    summary="Open a download link (no token)",
    response_class=Response,
    responses={**errors(403, 404, 503), **BYTES},
)
def open_link(request: Request, signed: str) -> Response:
    """The output's bytes (or, on S3, a redirect to a presigned URL that expires with the
    link); 403 for a link that expired or was altered, 404 once its job or output is gone."""
    s = svc(request)
    key, filename, left = links.open_link(s, signed)
    url = s.objects.download_url(key, int(left) + 1, filename)
    if url:
        return RedirectResponse(url, status_code=307, headers=_PRIVATE)
    path = s.objects.local_path(key)
    if path is not None:
        return FileResponse(path, filename=filename, media_type="application/octet-stream",
                            headers=_PRIVATE)  # fmt: skip
    return StreamingResponse(s.objects.open_read(key), media_type="application/octet-stream",
                             headers={**_PRIVATE, **attachment(filename)})  # fmt: skip


@router.post(
    "/jobs/{job_id}/resubmit",
    status_code=201,
    summary="Run an ended job of yours again, as a new job",
    responses=for_user(400, 404, 409, 429),
)
async def resubmit(
    request: Request, user: User, job_id: str, body: ResubmitBody | None = None
) -> dict:
    """The new job's view (as ``GET /jobs/{id}``), whose ``resubmit_of`` is ``job_id``: the same
    description and payload, checked as a new submit is (queues, limits, inputs, quota)."""
    s = svc(request)
    key = body.idempotency_key if body is not None else None
    job = await rerun.resubmit(s, user, job_id, own_hosts(s, request.url.netloc), key)
    return job_view(job, str(request.base_url), s.objects)
