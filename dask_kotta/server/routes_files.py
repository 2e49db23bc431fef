"""The files API: a user's uploads (usable as inputs) and objects fetched by their URL.

``Kotta.upload_file`` starts an upload here and gets back a URL for
``inputs=``; ``KOut`` fetches an output by its store URL when a presigned URL
it holds has expired. Each route calls ``files``; refusals are domain errors
that ``app`` answers with. The runners' file routes are in ``routes_runner``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from . import destinations, files
from .deps import BodyTooLarge, PathInt, User, serve, spool, svc
from .inputs import own_hosts
from .models import CompleteBody, DestinationsBody, UploadBody
from .openapi import BYTES, BYTES_BODY, for_user

router = APIRouter(prefix="/api/v1")


@router.post(
    "/uploads",
    summary="Start storing a file of yours; returns its input URL",
    responses=for_user(400, 413, 429),
)
def start_upload(request: Request, user: User, body: UploadBody) -> dict:
    """Returns ``url`` (for ``inputs=``) and ``plan``: how to send the bytes.

    ``plan.mode`` is ``server`` (PUT the bytes to ``plan.url`` with your
    token), ``put`` (one presigned PUT to ``plan.url``) or ``multipart``
    (PUT each part to ``plan.urls[i]``, then POST ``/api/v1/uploads/complete``).
    """
    return files.start_upload(svc(request), user["id"], body.name, body.size, str(request.base_url))


@router.post(
    "/destinations/check",
    summary="Whether jobs of yours may write these s3:// places",
    responses=for_user(400, 403),
)
def check_destinations(request: Request, user: User, body: DestinationsBody) -> dict:
    """Answers ``{"urls": [...]}`` when a job of yours could declare every one of ``urls``
    as a destination (a write grant of the operator's policy covers it, and it is outside
    the service's store); else the refusal a submit would get, naming the first place and
    the grant it lacks. Nothing is written, and no job is made."""
    destinations.check_destinations(svc(request), user["name"], body.urls)
    return {"urls": body.urls}


@router.put(
    "/uploads/{uid}/{upload_id}/{name}",
    summary="Send an upload's bytes (local store)",
    responses=for_user(400, 404, 413),
    openapi_extra=BYTES_BODY,
)
async def put_upload(request: Request, user: User, uid: PathInt, upload_id: str, name: str) -> dict:
    """The body must be exactly the size its start declared (413 over it, 400 under it); the
    server stops reading past it, and stores nothing unless the size is right."""
    s = svc(request)
    key = files.upload_key(user["id"], uid, upload_id, name)
    declared = files.started_upload_size(s, key, upload_id)
    length = request.headers.get("content-length", "")
    if length.isdigit():  # refused before a byte of it is read
        files.refuse_other_size(name, declared, int(length), exact=True)
    try:
        f = await spool(request, limit=declared)
    except BodyTooLarge as e:
        files.refuse_other_size(name, declared, e.received, exact=False)
        raise
    with f:
        files.refuse_other_size(name, declared, f.seek(0, 2), exact=True)
        f.seek(0)
        size = s.objects.put_stream(key, f)
    return {"size": size}


@router.delete(
    "/uploads", summary="Delete one of your uploads by its URL", responses=for_user(400, 404)
)
def delete_upload(request: Request, user: User, url: str) -> dict:
    """Frees its room in your storage quota; jobs that already staged it are not affected."""
    s = svc(request)
    files.delete_upload(s, user["id"], url, own_hosts(s, request.url.netloc))
    return {"deleted": url}


@router.get(
    "/uploads/{uid}/{upload_id}/{name}",
    summary="Read back one of your uploads",
    response_class=Response,
    responses={**for_user(400, 404), **BYTES},
)
def get_upload(request: Request, user: User, uid: PathInt, upload_id: str, name: str) -> Response:
    key = files.existing_upload_key(svc(request), user["id"], uid, upload_id, name)
    return serve(request, key, name)


@router.post(
    "/uploads/complete",
    summary="Finish (or abort) a multipart upload of yours",
    responses=for_user(400, 403, 404),
)
def complete_user_upload(request: Request, user: User, body: CompleteBody) -> dict:
    s = svc(request)
    key = files.users_upload_key(s, user["id"], body.url, own_hosts(s, request.url.netloc))
    declared = None if body.abort else files.declared_size(s, key)
    files.complete(s, key, body.upload_id, body.etags, body.abort, declared)
    return {"url": body.url}


@router.get(
    "/objects",
    summary="Fetch an object of yours by its s3:// or server URL",
    response_class=Response,
    responses={**for_user(400, 404), **BYTES},
)
def get_object(request: Request, user: User, url: str) -> Response:
    """Redirects to a fresh presigned URL (S3) or serves the bytes (local store).

    ``KOut`` uses it when a presigned URL it holds has expired.
    """
    s = svc(request)
    key = files.users_object_key(s, user["id"], url, own_hosts(s, request.url.netloc))
    return serve(request, key, key.rsplit("/", 1)[-1])
