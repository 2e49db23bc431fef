"""The web page: its files (``/``, ``/static/...``) and what only it asks (``/api/v1/info``).

The page holds no data: it is plain HTML, CSS and JavaScript, served as they are (no build
step, nothing from elsewhere), and reads the API with the token its user gives it. Its
answers forbid any script but the page's own file (``Content-Security-Policy``), so a job
name or a log line that looks like HTML can never run, even if the page had a bug that
inserted it as markup.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import __version__
from ..errors import NotFoundError
from .deps import User, svc
from .openapi import for_user

router = APIRouter()

_STATIC = Path(__file__).with_name("static")
#: The page's files and their types: nothing else under static/ is served.
_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: Scripts and styles from this server's files only (no inline script, no handler
#: attribute); requests to this origin only; no framing of the page by another site.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new version of the server serves a new page: never an old script with a new API.
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


@router.get("/", include_in_schema=False)
def index() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in _FILES:
        raise NotFoundError(f"no file {name!r} on this page")
    return Response(_read(name), media_type=_FILES[name], headers=_HEADERS)


@router.get("/api/v1/info", summary="What the web page shows of the service", responses=for_user())
def info(request: Request, user: User) -> dict:
    """``version`` of the server and ``dashboard``: the dask dashboard's URL as the operator
    gave it (``--dashboard-url``), or null."""
    return {"version": __version__, "dashboard": svc(request).config.dashboard_url}
