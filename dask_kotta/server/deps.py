"""What routes take from a request: the service, the user or attempt asking, and bodies.

FastAPI dependencies (:data:`User`, :data:`Auth`) and the two helpers that
move object bytes between a request and the store without holding them whole
in memory (:func:`serve`, :func:`spool`).
"""

from __future__ import annotations

import tempfile
from contextlib import aclosing
from typing import IO, Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Header, Path, Request, Security
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import AuthenticationError, ForbiddenError, InvalidRequestError, PayloadTooLargeError
from .auth import bearer, hash_token
from .claims import Attempt
from .models import MAX_INT
from .service import Service


def svc(request: Request) -> Service:
    """The service of the app serving ``request``."""
    return request.app.state.svc


#: For the published schema only: says which routes take a bearer token. It refuses nothing
#: (``auto_error=False``); the dependencies below read the header and answer 401 themselves.
BEARER = HTTPBearer(
    auto_error=False,
    description="A user's token (`dask-kotta token`); on runner routes, the attempt's "
    "dispatch token, or the slot secret for `/runner/next`",
)
_Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def current_user(request: Request, _: _Bearer = None) -> dict[str, Any]:
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
    request: Request,
    job_id: str,
    x_kotta_attempt: Annotated[
        int, Header(ge=0, le=MAX_INT, description="The attempt number the job was claimed with")
    ],
    _: _Bearer = None,
) -> Attempt:
    """The attempt a runner names: path's job, ``X-Kotta-Attempt`` and its dispatch token."""
    token = bearer(request.headers.get("authorization"))
    if token is None:
        raise AuthenticationError("missing dispatch token")
    return Attempt(job_id, x_kotta_attempt, hash_token(token))


Auth = Annotated[Attempt, Depends(runner_auth)]


def attachment(filename: str) -> dict[str, str]:
    """The ``Content-Disposition`` header a ``FileResponse`` would send for ``filename``, for a
    streamed object (one kept as a row of the job database has no file to serve)."""
    quoted = quote(filename)
    if quoted != filename:
        return {"Content-Disposition": f"attachment; filename*=utf-8''{quoted}"}
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def serve(request: Request, key: str, filename: str) -> Response:
    """An object of the store as the answer: a redirect to a presigned URL, the file, or a stream."""
    objects = svc(request).objects
    url = objects.presigned_get(key)
    if url:
        return RedirectResponse(url, status_code=307)
    path = objects.local_path(key)
    if path is not None:
        return FileResponse(path, filename=filename, media_type="application/octet-stream")
    return StreamingResponse(
        objects.open_read(key), media_type="application/octet-stream", headers=attachment(filename)
    )


class BodyTooLarge(Exception):
    """A body went past the ``limit`` given to :func:`spool`; ``received`` bytes had come."""

    def __init__(self, received: int):
        super().__init__(received)
        self.received = received


async def spool(request: Request, limit: int | None = None) -> IO[bytes]:
    """The request's body in a temporary file (in memory up to 8 MiB), at its start.

    With ``limit``, reading stops as soon as more than ``limit`` bytes came
    (:class:`BodyTooLarge`): memory and disk hold at most ``limit`` bytes of it.
    """
    # Spooled, so a large output never sits whole in the server's memory.
    f = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    n = 0
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                n += len(chunk)
                if limit is not None and n > limit:
                    raise BodyTooLarge(n)
                f.write(chunk)
    except BaseException:
        f.close()
        raise
    f.seek(0)
    return f


class _PartTooLarge(MultiPartException):
    pass


class _BoundedParts(MultiPartParser):
    """Starlette's multipart parser, refusing a file part past ``limit`` bytes as it arrives.

    Starlette bounds only the parts it keeps in memory: a file part went to disk whole,
    and the route then read it into memory whole, before it could refuse it (a chunked
    300 MiB payload grew the server by 300 MiB).
    """

    def __init__(self, *args: Any, limit: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.limit = limit
        self._part_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._part_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part_bytes += end - start
        if self._current_part.file is not None and self._part_bytes > self.limit:
            name = self._current_part.field_name
            raise _PartTooLarge(f"{name} is over the limit of {self.limit} bytes")
        super().on_part_data(data, start, end)


async def bounded_form(request: Request, limit: int) -> FormData:
    """The request's form, each part (payload or field) at most ``limit`` bytes, checked as
    it streams: ``PayloadTooLargeError`` past it, ``InvalidRequestError`` if malformed."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.form(max_files=100_000, max_fields=100_000, max_part_size=limit)
    try:
        async with aclosing(request.stream()) as stream:
            parser = _BoundedParts(request.headers, stream, max_files=100_000,
                                   max_fields=100_000, max_part_size=limit, limit=limit)  # fmt: skip
            return await parser.parse()
    except _PartTooLarge as e:
        raise PayloadTooLargeError(e.message) from None
    except MultiPartException as e:
        raise InvalidRequestError(e.message) from None
