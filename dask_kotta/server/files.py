"""Files beside jobs: users' uploads, objects fetched by URL, runners' inputs and outputs.

Every key this module hands out is under the asking user's prefix, or the
asking runner's job: ``inputs.store_key`` refuses the rest. Outputs: a runner
asks for an upload plan per file (presigned PUT or multipart URLs on S3;
"through the server" on a local store), for its own job's declared outputs
and STDOUT/STDERR only.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any
from urllib.parse import quote

from ..errors import (
    APIError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UnsafePathError,
)
from ..paths import safe_relpath
from ..store.objects import job_key, user_prefix
from .inputs import store_key
from .service import Service
from .usage import PLAN, read_plan, show_bytes


def _upload_dir(user_id: int, upload_id: str) -> str:
    return f"{user_prefix(user_id)}/uploads/{upload_id}"


def start_upload(s: Service, user_id: int, name: str, size: int, base_url: str) -> dict[str, Any]:
    """A new upload of ``size`` bytes named ``name``: its input ``url`` and how to send it.

    ``PayloadTooLargeError`` (413) past ``--max-upload``, ``LimitExceededError`` (429) if it
    would take the user past ``--max-storage``. The declared size is kept beside the upload
    (:data:`PLAN`): the bytes sent later are held to it, on every kind of store.
    """
    cap = s.config.max_upload_bytes
    if cap and size > cap:
        raise PayloadTooLargeError(
            f"an upload of {show_bytes(size)} is over the limit of {show_bytes(cap)} per "
            "upload (the operator's --max-upload)"
        )
    if name != name.strip():
        # Not stripped: the URL returned would then name another file than the one asked for.
        raise InvalidRequestError(f"upload name {name!r} starts or ends with whitespace")
    if "/" in name:
        raise UnsafePathError(f"upload name {name!r} must be a file name, without '/'")
    name = safe_relpath(name, "upload name")
    if name == PLAN.split("/")[0]:
        raise InvalidRequestError(f"upload name {name!r} is reserved: choose another")
    s.usage.check(user_id, size, s.config.max_storage_bytes, "this upload")
    upload_id = secrets.token_hex(8)
    upload_dir = _upload_dir(user_id, upload_id)
    key = f"{upload_dir}/{name}"
    state = json.dumps({"name": name, "size": size, "at": time.time()}).encode()
    s.objects.put_bytes(f"{upload_dir}/{PLAN}", state)
    plan = s.objects.upload_plan(key, size)
    server_url = f"{base_url.rstrip('/')}/api/v1/uploads/{user_id}/{upload_id}/{quote(name)}"
    if plan is None:
        plan = {"mode": "server", "url": server_url}
    return {"url": s.objects.store_url(key) or server_url, "name": name, "plan": plan}


def upload_key(user_id: int, uid: int, upload_id: str, name: str) -> str:
    """The key of an upload sent through the server, by the parts of its URL."""
    if uid != user_id:
        raise NotFoundError("no such upload")
    if not re.fullmatch(r"[0-9a-f]{8,64}", upload_id):
        raise InvalidRequestError(f"malformed upload id {upload_id!r}")
    return f"{_upload_dir(uid, upload_id)}/{safe_relpath(name, 'upload name')}"


def declared_size(s: Service, key: str) -> int | None:
    """The size the start of upload ``key`` declared; None for an upload begun before sizes
    were kept (or with no start at all)."""
    upload_dir, _, name = key.rpartition("/")
    try:
        state = read_plan(s.objects, f"{upload_dir}/{PLAN}")
    except NotFoundError:
        return None
    return int(state["size"]) if state.get("name") == name else None


def started_upload_size(s: Service, key: str, upload_id: str) -> int:
    """The declared size of upload ``key``; ``NotFoundError`` if no start declared it (a PUT
    to an id the server never gave out would escape ``--max-upload`` and the quota)."""
    size = declared_size(s, key)
    if size is None:
        raise NotFoundError(
            f"no upload {key.rsplit('/', 1)[-1]!r} with id {upload_id} was started: "
            "POST /api/v1/uploads first"
        )
    return size


def refuse_other_size(name: str, declared: int, sent: int, exact: bool) -> None:
    """Refuse a body of ``sent`` bytes for an upload declared as ``declared`` (``exact``:
    all of it was counted, else more was on its way); nothing is stored."""
    if sent > declared:
        more = "" if exact else " at least"
        raise PayloadTooLargeError(
            f"upload {name!r} was declared as {declared} bytes but{more} {sent} bytes were "
            "sent; nothing was stored (start a new upload with the file's size)"
        )
    if sent < declared:
        raise InvalidRequestError(
            f"upload {name!r} was declared as {declared} bytes but only {sent} bytes were "
            "sent; nothing was stored"
        )


def delete_upload(s: Service, user_id: int, url: str, hosts: set[str]) -> None:
    """Delete one of the user's uploads (its file and what its start kept) by its URL."""
    key = users_upload_key(s, user_id, url, hosts)
    if s.objects.size(key) is None:
        raise NotFoundError(f"no upload at {url!r}")
    s.objects.delete_prefix(key.rpartition("/")[0])
    s.usage.forget(user_id)


def existing_upload_key(s: Service, user_id: int, uid: int, upload_id: str, name: str) -> str:
    """As :func:`upload_key`, for an upload that must exist (``NotFoundError`` otherwise)."""
    key = upload_key(user_id, uid, upload_id, name)
    if s.objects.size(key) is None:
        raise NotFoundError(f"no upload {name!r} with id {upload_id}")
    return key


def users_upload_key(s: Service, user_id: int, url: str, hosts: set[str]) -> str:
    """The key of the user's own upload that ``url`` names."""
    key = store_key(s, user_id, url, hosts)
    if key is None or not key.startswith(f"{user_prefix(user_id)}/uploads/"):
        raise InvalidRequestError(f"{url!r} is not an upload of yours")
    return key


def users_object_key(s: Service, user_id: int, url: str, hosts: set[str]) -> str:
    """The key of an existing object of the user's that ``url`` names (s3:// or this server's)."""
    key = store_key(s, user_id, url, hosts)
    if key is None:
        raise InvalidRequestError(f"{url!r} is not in this service's store")
    if s.objects.size(key) is None:
        raise NotFoundError(f"no object at {url!r}")
    return key


def complete(
    s: Service, key: str, upload_id: str, etags: list[str], abort: bool, declared: int | None = None
) -> None:
    """Finish (or abort) a multipart upload; ``InvalidRequestError`` for a wrong id or ETags.

    With ``declared``, an upload whose object is of another size is deleted and refused:
    its parts' URLs sign their sizes, but fewer parts, or parts sent twice, still add up
    to another size than the one declared.
    """
    try:
        if abort:
            s.objects.abort_upload(key, upload_id)
        else:
            s.objects.complete_upload(key, upload_id, etags)
    except APIError:
        raise
    except Exception as e:  # botocore's ClientError: a wrong upload id or ETag list
        code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
        raise InvalidRequestError(
            f"cannot {'abort' if abort else 'complete'} the upload: {code}: {e}"
        ) from None
    if abort or declared is None:
        return
    size = s.objects.size(key)
    if size is not None and size != declared:
        s.objects.delete(key)
        raise InvalidRequestError(
            f"upload {key.rsplit('/', 1)[-1]!r} was declared as {declared} bytes but its "
            f"parts make {size} bytes; it was deleted (start a new upload)"
        )


def runner_input_key(s: Service, job: dict[str, Any], index: int) -> str:
    """The key of input ``index`` of ``job``, when it comes from the service's store."""
    key = (job["spec"].get("input_keys") or {}).get(str(index))
    if key is None or key.split("/", 1)[0] != user_prefix(job["owner"]):
        raise NotFoundError(f"job {job['id']} has no input {index} in the service's store")
    if s.objects.size(key) is None:
        raise NotFoundError(f"input {job['spec']['inputs'][index]!r} does not exist")
    return key


def runner_file_key(job: dict[str, Any], name: str) -> tuple[str, str]:
    """``(key, name)`` of a file a runner sends through the server for its job."""
    name = safe_relpath(name, "output")
    return job_key(job["owner"], job["id"], name), name


def declared_output_key(job: dict[str, Any], name: str) -> str:
    """The key of one of ``job``'s declared outputs (or STDOUT/STDERR); 403 for any other."""
    spec = job["spec"]
    allowed = {*spec.get("outputs", []), spec.get("stdout"), spec.get("stderr")}
    name = safe_relpath(name, "output")
    if name not in allowed:
        raise ForbiddenError(f"{name!r} is not a declared output of job {job['id']}")
    return job_key(job["owner"], job["id"], name)
