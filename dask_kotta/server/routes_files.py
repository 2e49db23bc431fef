"""Files beside jobs: user uploads, inputs that live in the service's own store, output uploads.

- ``Kotta.upload_file`` stores a file under the user's prefix
  (``u<id>/uploads/<random>/<name>``) and gets back a URL usable in ``inputs=``:
  ``s3://BUCKET/PREFIX/u<id>/uploads/...`` on an S3 store, or this server's
  ``/api/v1/uploads/<id>/<random>/<name>`` on a local store.
- At submit, every input that points into the service's store (those URLs,
  ``KOut.s3_url`` of an earlier job, a job-file URL of this server) is resolved
  to its key, and refused with 403 unless it is under the submitting user's
  prefix. At claim, the runner gets for each such input a presigned GET URL
  (S3) or a runner-API URL that serves that one input of that one job to the
  holder of the attempt's dispatch token (local store). A worker thus never
  needs the store's credentials, nor sees any other object.
- Any other ``s3://`` input is refused (403) unless the operator's policy
  grants the user that bucket or prefix (``s3_grants``); the server then
  presigns a GET for it at claim, with its own S3 credentials, and the runner
  downloads that URL. Workers hold no credentials for users' data.
- ``http(s)`` inputs that are not the service's own go into the plan as they
  are, with the networks the operator allows them to reach: the runner checks
  every address (and every redirect) against those, whatever the job says.
- Outputs: the runner asks for an upload plan per file (presigned PUT or
  multipart URLs on S3; "through the server" on a local store), for its own
  job's declared outputs and STDOUT/STDERR only.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote, unquote, urlparse

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from ..errors import APIError, InvalidRequestError, UnsafePathError
from ..paths import safe_relpath
from ..s3client import parse_s3_url
from ..store.objects import job_prefix, user_prefix
from ..store.s3 import GET_EXPIRES_S
from .policy import key_is_plain
from .routes_jobs import User, _serve, svc
from .routes_runner import Auth, _held, _spool
from .service import Service
from .validate import input_basename

router = APIRouter()

_UPLOAD_PATH = re.compile(r"^/api/v1/uploads/(\d+)/([0-9a-f]{8,64})/([^/]+)$")
_JOB_FILE_PATH = re.compile(r"^/api/v1/jobs/([^/]+)/files/(.+)$")


class Forbidden(APIError):
    """An input names a part of the store that belongs to someone else."""

    status = 403


def _hosts(s: Service, request: Request | None) -> set[str]:
    hosts = {urlparse(s.config.public_url).netloc}
    if request is not None:
        hosts.add(request.url.netloc)
    return hosts


def store_key(s: Service, user_id: int, url: str, hosts: set[str]) -> str | None:
    """The store key ``url`` names if it points into the service's store, else None.

    Raises ``Forbidden`` for another user's part of the store and
    ``InvalidRequestError`` for a key that could escape its prefix.
    """
    p = urlparse(url)
    mine = user_prefix(user_id)
    if p.scheme == "s3":
        try:
            key = s.objects.key_for_url(url)
        except UnsafePathError as e:
            raise InvalidRequestError(str(e)) from None
        if key is None:
            return None
        if key.split("/", 1)[0] != mine:
            raise Forbidden(
                f"input {url!r} points into the service's store outside your own prefix "
                f"({mine}/): only your own uploads and job files can be staged from there"
            )
        return key
    if p.scheme not in ("http", "https") or p.netloc not in hosts:
        return None
    path = unquote(p.path)
    if m := _UPLOAD_PATH.match(path):
        if int(m[1]) != user_id:
            raise Forbidden(f"input {url!r} is another user's upload")
        try:
            return f"{mine}/uploads/{m[2]}/{safe_relpath(m[3], 'upload name')}"
        except UnsafePathError as e:
            raise InvalidRequestError(str(e)) from None
    if m := _JOB_FILE_PATH.match(path):
        if s.store.get(m[1], owner=user_id) is None:
            raise Forbidden(
                f"input {url!r} names job {m[1]!r}, which is not yours (or does not exist)"
            )
        try:
            return f"{job_prefix(user_id, m[1])}/{safe_relpath(m[2], 'output')}"
        except UnsafePathError as e:
            raise InvalidRequestError(str(e)) from None
    return None


class NoSigner(APIError):
    """The server cannot presign a granted input (no S3 credentials)."""

    status = 503


def check_grant(s: Service, user_name: str, url: str, sign: bool = True) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` input outside the store that ``user_name`` was granted.

    Raises ``Forbidden`` when no grant covers it, ``InvalidRequestError`` for
    a key with ``.``/``..`` parts, and ``NoSigner`` when the server could not
    presign it (checked at submit by signing once: it costs no request).
    """
    bucket, key = parse_s3_url(url)
    if not key_is_plain(key):
        raise InvalidRequestError(
            f"input {url!r}: s3:// keys may not contain '.' or '..' parts (S3 servers and "
            "HTTP clients differ on whether they normalise them)"
        )
    if s.policy.grant_for(user_name, bucket, key) is None:
        raise Forbidden(
            f"input {url!r} is outside the service's store and no S3 grant covers it for user "
            f"{user_name!r}: workers hold no credentials for users' data, so the server presigns "
            'only what the operator granted ("s3_grants" in the server\'s policy file, --policy)'
        )
    if sign:
        presign_grant(s, url, bucket, key, 60)
    return bucket, key


def presign_grant(s: Service, url: str, bucket: str, key: str, expires_s: int) -> str:
    import botocore.exceptions as bx

    try:
        return s.grant_presigner().url("GET", bucket, key, expires_s)
    except bx.NoCredentialsError:
        raise NoSigner(
            f"input {url!r} is granted, but the server has no S3 credentials to presign it "
            "(boto3's standard chain: AWS_ACCESS_KEY_ID..., AWS_PROFILE, an instance role)"
        ) from None
    except (bx.BotoCoreError, ValueError) as e:
        raise NoSigner(f"input {url!r}: the server cannot presign it: {e}") from None


def place_inputs(
    s: Service, user: dict, urls: list[str], request: Request
) -> tuple[dict[str, str], dict[str, str]]:
    """Where each input comes from: store keys, and granted ``s3://`` inputs (to the user's name),
    both by input index (as text). Other ``s3://`` inputs are refused (403)."""
    hosts = _hosts(s, request)
    keys, granted = {}, {}
    for i, url in enumerate(urls):
        key = store_key(s, user["id"], url, hosts)
        if key is not None:
            keys[str(i)] = key
        elif urlparse(url).scheme == "s3":
            check_grant(s, user["name"], url)
            granted[str(i)] = user["name"]
    return keys, granted


def input_plan(s: Service, job: dict[str, Any]) -> list[dict[str, Any]]:
    """For the runner: each input's name, and where to fetch it if not from the URL itself."""
    spec = job["spec"]
    keys = spec.get("input_keys") or {}
    granted = spec.get("granted_inputs") or {}
    base = s.config.public_url.rstrip("/")
    networks = s.policy.networks()
    plan = []
    for i, url in enumerate(spec.get("inputs", [])):
        item: dict[str, Any] = {"url": url, "name": input_basename(url)}
        key = keys.get(str(i))
        scheme = urlparse(url).scheme
        if key is None and scheme == "s3":
            # Granted at submit; granted again now, by the policy in force, before signing.
            try:
                if str(i) not in granted:
                    raise Forbidden(f"input {url!r} is outside the service's store, not granted")
                bucket, k = check_grant(s, granted[str(i)], url, sign=False)
                item["fetch"] = presign_grant(s, url, bucket, k, GET_EXPIRES_S)
                endpoint = getattr(s.grant_presigner().client.meta, "endpoint_url", "")
                item["s3"] = {"bucket": bucket, "key": k, "endpoint": endpoint}
            except APIError as e:
                item["error"] = str(e)
        elif key is None and networks and scheme in ("http", "https"):
            item["allow_networks"] = networks
        # Checked at submit; checked again because the plan hands out access.
        if key is not None and key.split("/", 1)[0] == user_prefix(job["owner"]):
            signed = s.objects.presigned_get(key)
            if signed:
                item["fetch"] = signed
            else:
                item["fetch"] = f"{base}/api/v1/runner/jobs/{job['id']}/inputs/{i}"
                item["auth"] = "dispatch"
        plan.append(item)
    return plan


# -- user uploads ---------------------------------------------------------------------------


class UploadBody(BaseModel):
    name: str = Field(..., min_length=1, max_length=255)
    size: int = Field(..., ge=0)


@router.post("/api/v1/uploads", summary="Start storing a file of yours; returns its input URL")
def start_upload(request: Request, user: User, body: UploadBody) -> dict:
    """Returns ``url`` (for ``inputs=``) and ``plan``: how to send the bytes.

    ``plan.mode`` is ``server`` (PUT the bytes to ``plan.url`` with your
    token), ``put`` (one presigned PUT to ``plan.url``) or ``multipart``
    (PUT each part to ``plan.urls[i]``, then POST ``/api/v1/uploads/complete``).
    """
    s = svc(request)
    name = body.name.strip()
    try:
        if "/" in name:
            raise UnsafePathError(f"upload name {name!r} must be a file name, without '/'")
        name = safe_relpath(name, "upload name")
    except UnsafePathError as e:
        raise HTTPException(400, str(e)) from None
    upload_id = secrets.token_hex(8)
    key = f"{user_prefix(user['id'])}/uploads/{upload_id}/{name}"
    plan = s.objects.upload_plan(key, body.size)
    base = str(request.base_url).rstrip("/")
    server_url = f"{base}/api/v1/uploads/{user['id']}/{upload_id}/{quote(name)}"
    if plan is None:
        plan = {"mode": "server", "url": server_url}
    return {"url": s.objects.store_url(key) or server_url, "name": name, "plan": plan}


def _upload_key(request: Request, user: dict, uid: int, upload_id: str, name: str) -> str:
    if uid != user["id"]:
        raise HTTPException(404, "no such upload")
    if not re.fullmatch(r"[0-9a-f]{8,64}", upload_id):
        raise HTTPException(400, f"malformed upload id {upload_id!r}")
    try:
        name = safe_relpath(name, "upload name")
    except UnsafePathError as e:
        raise HTTPException(400, str(e)) from None
    return f"{user_prefix(uid)}/uploads/{upload_id}/{name}"


@router.put(
    "/api/v1/uploads/{uid}/{upload_id}/{name}", summary="Send an upload's bytes (local store)"
)
async def put_upload(request: Request, user: User, uid: int, upload_id: str, name: str) -> dict:
    key = _upload_key(request, user, uid, upload_id, name)
    with await _spool(request) as f:
        size = svc(request).objects.put_stream(key, f)
    return {"size": size}


@router.get("/api/v1/uploads/{uid}/{upload_id}/{name}", summary="Read back one of your uploads")
def get_upload(request: Request, user: User, uid: int, upload_id: str, name: str):
    key = _upload_key(request, user, uid, upload_id, name)
    if svc(request).objects.size(key) is None:
        raise HTTPException(404, f"no upload {name!r} with id {upload_id}")
    return _serve(request, key, name)


class CompleteBody(BaseModel):
    url: str
    upload_id: str
    etags: list[str] = []
    abort: bool = False


@router.post("/api/v1/uploads/complete", summary="Finish (or abort) a multipart upload of yours")
def complete_user_upload(request: Request, user: User, body: CompleteBody) -> dict:
    s = svc(request)
    try:
        key = store_key(s, user["id"], body.url, _hosts(s, request))
    except APIError as e:
        raise HTTPException(e.status, str(e)) from None
    if key is None or not key.startswith(f"{user_prefix(user['id'])}/uploads/"):
        raise HTTPException(400, f"{body.url!r} is not an upload of yours")
    _complete(s, key, body.upload_id, body.etags, body.abort)
    return {"url": body.url}


def _complete(s: Service, key: str, upload_id: str, etags: list[str], abort: bool) -> None:
    try:
        if abort:
            s.objects.abort_upload(key, upload_id)
        else:
            s.objects.complete_upload(key, upload_id, etags)
    except APIError:
        raise
    except Exception as e:  # botocore's ClientError: a wrong upload id or ETag list
        code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
        raise HTTPException(
            400, f"cannot {'abort' if abort else 'complete'} the upload: {code}: {e}"
        ) from None


@router.get("/api/v1/objects", summary="Fetch an object of yours by its s3:// or server URL")
def get_object(request: Request, user: User, url: str):
    """Redirects to a fresh presigned URL (S3) or serves the bytes (local store).

    ``KOut`` uses it when a presigned URL it holds has expired.
    """
    s = svc(request)
    try:
        key = store_key(s, user["id"], url, _hosts(s, request))
    except APIError as e:
        raise HTTPException(e.status, str(e)) from None
    if key is None:
        raise HTTPException(400, f"{url!r} is not in this service's store")
    if s.objects.size(key) is None:
        raise HTTPException(404, f"no object at {url!r}")
    return _serve(request, key, key.rsplit("/", 1)[-1])


# -- runners --------------------------------------------------------------------------------


@router.get(
    "/api/v1/runner/jobs/{job_id}/inputs/{index}", summary="One input of the job, from the store"
)
def runner_input(request: Request, a: Auth, job_id: str, index: int):
    job = _held(request, a)
    key = (job["spec"].get("input_keys") or {}).get(str(index))
    if key is None or key.split("/", 1)[0] != user_prefix(job["owner"]):
        raise HTTPException(404, f"job {job_id} has no input {index} in the service's store")
    if svc(request).objects.size(key) is None:
        raise HTTPException(404, f"input {job['spec']['inputs'][index]!r} does not exist")
    return _serve(request, key, key.rsplit("/", 1)[-1])


class PlanFile(BaseModel):
    name: str
    size: int = Field(..., ge=0)


class PlansBody(BaseModel):
    files: list[PlanFile] = Field(..., max_length=100_000)


def _output_key(job: dict, name: str) -> str:
    spec = job["spec"]
    allowed = {*spec.get("outputs", []), spec.get("stdout"), spec.get("stderr")}
    try:
        name = safe_relpath(name, "output")
    except UnsafePathError as e:
        raise HTTPException(400, str(e)) from None
    if name not in allowed:
        raise HTTPException(403, f"{name!r} is not a declared output of job {job['id']}")
    return f"{job_prefix(job['owner'], job['id'])}/{name}"


@router.post("/api/v1/runner/jobs/{job_id}/uploads", summary="How to upload each output")
def runner_upload_plans(request: Request, a: Auth, body: PlansBody) -> dict:
    job = _held(request, a)
    objects = svc(request).objects
    return {"plans": [objects.upload_plan(_output_key(job, f.name), f.size) for f in body.files]}


class RunnerCompleteBody(BaseModel):
    name: str
    upload_id: str
    etags: list[str] = []
    abort: bool = False


@router.post("/api/v1/runner/jobs/{job_id}/uploads/complete", summary="Finish a multipart output")
def runner_complete(request: Request, a: Auth, body: RunnerCompleteBody) -> dict:
    job = _held(request, a)
    _complete(svc(request), _output_key(job, body.name), body.upload_id, body.etags, body.abort)
    return {"name": body.name}
