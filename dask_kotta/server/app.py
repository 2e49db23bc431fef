"""The ASGI application: routes, JSON errors, and the service's start and stop.

Routers, one per audience (``routes_jobs``, ``routes_listing``: users' jobs; ``routes_runner``:
runners and slots, ``routes_files``: users' uploads and objects), over one
:class:`~.service.Service`. Routes and the modules under them raise the domain
errors of ``dask_kotta.errors``; the handlers here are the one place that turns
an exception into an HTTP answer, always ``{"detail": "..."}``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .. import defaults as d
from ..errors import APIError, UnsafePathError
from . import (
    routes_admin,
    routes_files,
    routes_jobs,
    routes_listing,
    routes_logs,
    routes_outputs,
    routes_runner,
    routes_web,
)
from .models import NOT_TEXT
from .openapi import publish
from .service import ServerConfig, Service


def create_app(config: ServerConfig) -> FastAPI:
    """The Kotta API for one configuration; its service starts with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = Service(config)
        app.state.svc = svc
        await svc.start()
        try:
            yield
        finally:
            await svc.close()

    app = FastAPI(title="dask-kotta", version=__version__, lifespan=lifespan)
    app.include_router(routes_listing.router)  # before routes_jobs: /jobs/counts
    app.include_router(routes_jobs.router)
    app.include_router(routes_runner.router)
    app.include_router(routes_files.router)
    app.include_router(routes_admin.router)  # admins: users' tokens
    app.include_router(routes_logs.router)  # live logs: users read them, runners send them
    app.include_router(routes_outputs.router)  # download links, resubmit
    app.include_router(routes_web.router)  # the web page and what it asks

    _add_error_handlers(app)
    publish(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own: no such route (404), wrong method (405)
        headers = exc.headers
        # Starlette names the methods of the first route on the path only (POST for /jobs,
        # which GET also serves); the schema lists them all, and so does Allow.
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allowed}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts, status = [], 422
        for err in exc.errors():
            if err.get("type") == NOT_TEXT:
                status = 400  # well-formed, but a string in it is not text (models.Body)
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(UnsafePathError)
    async def path_error(request: Request, exc: UnsafePathError) -> JSONResponse:
        # A name in the request (an output, an upload, a store key) that would escape its place
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(sa_exc.DBAPIError)
    async def database_error(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
        # A database that cannot be reached (server down, connection lost, SQLite locked past
        # its timeout) is a "not now", which clients retry: 503 with Retry-After. Any other
        # database error is a bug, and stays the 500 it was.
        if not (isinstance(exc, sa_exc.OperationalError) or exc.connection_invalidated):
            raise exc
        return JSONResponse(
            {"detail": f"the job database is unavailable: {database_problem(exc)}"},
            status_code=503,
            headers={"Retry-After": str(d.DB_RETRY_AFTER_S)},
        )


def _allowed_methods(request: Request) -> str | None:
    """The methods the published schema gives the request's path, as ``Allow`` says them.

    The most specific paths win: ``/jobs/wait`` is POST alone, though ``/jobs/{job_id}``
    (GET, DELETE) would match it too. None for a path the schema does not have.
    """
    path, best = request.scope["path"], None
    methods: set[str] = set()
    for template, ops in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path):
            params = template.count("{")
            if best is None or params < best:
                best, methods = params, set()
            if params == best:
                methods |= {m.upper() for m in ops}
    return ", ".join(sorted(methods)) if methods else None


def database_problem(exc: sa_exc.DBAPIError) -> str:
    """The driver's own words for a database error: its first line, without the statement
    (SQLAlchemy appends it) and without any credentials in a URL or connection string."""
    text = str(exc.orig if exc.orig is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return _SECRETS.sub(lambda m: f"{m[1] or m[2]}***", first)[:300]


# user:password@ in a URL, and password=... in a libpq connection string
_SECRETS = re.compile(r"(//[^/@\s:]*:)[^/@\s]*(?=@)|(?<![\w])(password\s*=\s*)\S+", re.I)
