"""Files beside jobs: users' uploads, objects fetched by URL, runners' inputs and outputs.

Every key this module hands out is under the asking user's prefix, or the
asking runner's job: ``inputs.store_key`` refuses the rest. Outputs: a runner
asks for an upload plan per file (presigned PUT or multipart URLs on S3;
"through the server" on a local store), for its own job's declared outputs
and STDOUT/STDERR only.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote

from ..errors import APIError, ForbiddenError, InvalidRequestError, NotFoundError, UnsafePathError
from ..paths import safe_relpath
from ..store.objects import job_key, user_prefix
from .inputs import store_key
from .service import Service


def start_upload(s: Service, user_id: int, name: str, size: int, base_url: str) -> dict[str, Any]:
    """A new upload of ``size`` bytes named ``name``: its input ``url`` and how to send it."""
    if name != name.strip():
        # Not stripped: the URL returned would then name another file than the one asked for.
        raise InvalidRequestError(f"upload name {name!r} starts or ends with whitespace")
    if "/" in name:
        raise UnsafePathError(f"upload name {name!r} must be a file name, without '/'")
    name = safe_relpath(name, "upload name")
    upload_id = secrets.token_hex(8)
    key = f"{user_prefix(user_id)}/uploads/{upload_id}/{name}"
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
    return f"{user_prefix(uid)}/uploads/{upload_id}/{safe_relpath(name, 'upload name')}"


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


def complete(s: Service, key: str, upload_id: str, etags: list[str], abort: bool) -> None:
    """Finish (or abort) a multipart upload; ``InvalidRequestError`` for a wrong id or ETags."""
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
