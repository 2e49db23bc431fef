"""What routes take from a request: the service, the user or attempt asking, and bodies.

FastAPI dependencies (:data:`User`, :data:`Auth`) and the two helpers that
move object bytes between a request and the store without holding them whole
in memory (:func:`serve`, :func:`spool`).
"""

from __future__ import annotations

import tempfile
from typing import IO, Annotated, Any

from fastapi import Depends, Header, Path, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from ..errors import AuthenticationError, ForbiddenError
from .auth import bearer, hash_token
from .claims import Attempt
from .models import MAX_INT
from .service import Service


def svc(request: Request) -> Service:
    """The service of the app serving ``request``."""
    return request.app.state.svc


def current_user(request: Request) -> dict[str, Any]:
    """The user whose token the request carries (401 for none or an unknown one)."""
    token = bearer(request.headers.get("authorization"))
    if token is None:
        raise AuthenticationError("missing or malformed 'Authorization: Bearer <token>' header")
    s = svc(request)
    user = s.user_for_token_hash(hash_token(token))
    if user is None:
        raise AuthenticationError(
            "unknown token: make a new credentials file with 'dask-kotta token NAME'"
        )
    if s.config.single_user is not None and user["name"] != s.config.single_user:
        raise ForbiddenError(
            f"jobs on this service are not contained ({s.config.uncontained}), so it serves "
            "only the user who started it; the operator can make containment work, or start "
            "it with --allow-uncontained to run every user's jobs uncontained"
        )
    return user


User = Annotated[dict[str, Any], Depends(current_user)]
#: An integer in a request's path: bounded as a body's are (see ``models.Count``).
PathInt = Annotated[int, Path(ge=0, le=MAX_INT)]


def runner_auth(
    request: Request, job_id: str, x_kotta_attempt: Annotated[int, Header(ge=0, le=MAX_INT)]
) -> Attempt:
    """The attempt a runner names: path's job, ``X-Kotta-Attempt`` and its dispatch token."""
    token = bearer(request.headers.get("authorization"))
    if token is None:
        raise AuthenticationError("missing dispatch token")
    return Attempt(job_id, x_kotta_attempt, hash_token(token))


Auth = Annotated[Attempt, Depends(runner_auth)]


def serve(request: Request, key: str, filename: str) -> Response:
    """An object of the store as the answer: a redirect to a presigned URL, the file, or a stream."""
    objects = svc(request).objects
    url = objects.presigned_get(key)
    if url:
        return RedirectResponse(url, status_code=307)
    path = objects.local_path(key)
    if path is not None:
        return FileResponse(path, filename=filename, media_type="application/octet-stream")
    return StreamingResponse(objects.open_read(key), media_type="application/octet-stream")


async def spool(request: Request) -> IO[bytes]:
    """The request's body in a temporary file (in memory up to 8 MiB), at its start."""
    # Spooled, so a large output never sits whole in the server's memory.
    f = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    async for chunk in request.stream():
        f.write(chunk)
    f.seek(0)
    return f
