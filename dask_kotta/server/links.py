"""Download links: short-lived URLs to a job's outputs that open without a token.

A browser or ``curl`` cannot send ``Authorization: Bearer``, and a token must never
be put in a URL (URLs end up in shells' histories, proxies' and servers' logs). So a
user asks for links (``POST /api/v1/jobs/{id}/links``, with their token) and gets,
per output, ``/api/v1/dl/{signed}``: the user's id, the job, the output's name and
an expiry, signed with HMAC-SHA256 under a secret kept in the job database
(``server_keys``, shared by every server of that database). Opening one checks the
signature (in constant time), the expiry, and that the job and output still exist
and are still that user's; then the bytes are served (local store) or the answer
redirects to a presigned GET that expires when the link does (S3).

A link holds no secret beyond its own lifetime: it names one object for at most
``--link-ttl`` seconds (10 minutes by default). The server's access log is off, so
links are not logged; where a proxy logs them, they are useless once expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from ..errors import ForbiddenError, NotFoundError, UnsafePathError
from ..paths import safe_relpath
from ..store.objects import job_key
from .jobs import own_job
from .service import Service

#: The route a link opens (``GET``), under which each link's signed part follows.
ROUTE = "/api/v1/dl"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, user_id: int, job_id: str, name: str, expires: int) -> str:
    """The signed part of a link to output ``name`` of ``job_id`` for ``user_id``."""
    body = _b64(json.dumps([user_id, job_id, name, expires], separators=(",", ":")).encode())
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


_INVALID = (
    "this download link is not valid (altered, cut short, or made by another service); "
    "ask for a new one: `dask-kotta status JOB_ID` prints fresh links"
)


def verify(key: bytes, signed: str, now: float) -> tuple[int, str, str, int]:
    """``(user_id, job_id, name, expires)`` of a link's signed part; ``ForbiddenError`` for one that is
    altered or expired (the check of the signature takes the same time whatever it holds)."""
    body, _, mac = signed.partition(".")
    want = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest()).encode()
    # As text, not decoded: base64's last character has spare bits, so two spellings would
    # decode to one signature.
    if not hmac.compare_digest(want, mac.encode("utf-8", "surrogateescape")):
        raise ForbiddenError(_INVALID)
    user_id, job_id, name, expires = json.loads(_unb64(body))  # ours: it is signed
    if now >= expires:
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
        raise ForbiddenError(
            f"this download link expired at {at}; ask for a new one: "
            f"`dask-kotta status {job_id}` prints fresh links, `dask-kotta get {job_id}` downloads"
        )
    return int(user_id), str(job_id), str(name), int(expires)


def make_links(
    s: Service, user_id: int, job_id: str, names: list[str] | None, base_url: str
) -> dict[str, Any]:
    """``{"links": {name: url}, "expires": unix_seconds}`` for outputs ``names`` of the user's
    job (None: every output it has, STDOUT/STDERR included). ``NotFoundError`` for a job
    that is not the user's, or a name it has no output under."""
    job = own_job(s, user_id, job_id)
    have = [o["name"] for o in job["outputs"]]
    if names is None:
        wanted = have
    else:
        wanted = []
        for name in names:
            try:
                clean = safe_relpath(name, "output")
            except UnsafePathError:
                clean = None
            if clean not in have:
                listed = ", ".join(have) if have else "none yet"
                raise NotFoundError(
                    f"job {job_id} has no output {name!r} (status {job['status']}; "
                    f"its outputs: {listed})"
                )
            wanted.append(clean)
    expires = int(time.time() + s.config.link_ttl_s)
    key, base = s.link_key(), base_url.rstrip("/")
    links = {n: f"{base}{ROUTE}/{sign(key, user_id, job_id, n, expires)}" for n in wanted}
    return {"links": links, "expires": expires}


def open_link(s: Service, signed: str) -> tuple[str, str, float]:
    """``(store key, file name, seconds left)`` of the output a link names, if it is still
    valid and its job and output still exist; ``ForbiddenError`` or ``NotFoundError``."""
    now = time.time()
    user_id, job_id, name, expires = verify(s.link_key(), signed, now)
    job = s.store.get(job_id, owner=user_id)
    if job is None or name not in {o["name"] for o in job["outputs"]}:
        raise NotFoundError(f"output {name!r} of job {job_id} is no longer there (deleted?)")
    return job_key(user_id, job_id, name), name.rsplit("/", 1)[-1], expires - now
