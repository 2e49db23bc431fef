"""Where a job's inputs come from, checked at submit and planned again at claim.

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
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import APIError, ForbiddenError, InvalidRequestError
from ..paths import safe_relpath
from ..s3client import parse_s3_url
from ..store.objects import job_key, user_prefix
from ..store.s3 import GET_EXPIRES_S
from .policy import key_is_plain
from .service import Service
from .validate import input_basename

_UPLOAD_PATH = re.compile(r"^/api/v1/uploads/(\d+)/([0-9a-f]{8,64})/([^/]+)$")
_JOB_FILE_PATH = re.compile(r"^/api/v1/jobs/([^/]+)/files/(.+)$")


class NoSigner(APIError):
    """The server cannot presign a granted input (no S3 credentials)."""

    # Its operator's to fix, not a passing outage: a 503 would have clients retry for a minute.
    status = 500


def own_hosts(s: Service, request_host: str | None = None) -> set[str]:
    """The ``host:port`` names under which URLs point at this server."""
    hosts = {urlparse(s.config.public_url).netloc}
    if request_host is not None:
        hosts.add(request_host)
    return hosts


def store_key(s: Service, user_id: int, url: str, hosts: set[str]) -> str | None:
    """The store key ``url`` names if it points into the service's store, else None.

    Raises ``ForbiddenError`` for another user's part of the store and
    ``UnsafePathError`` for a key that could escape its prefix.
    """
    p = urlparse(url)
    mine = user_prefix(user_id)
    if p.scheme == "s3":
        key = s.objects.key_for_url(url)
        if key is None:
            return None
        if key.split("/", 1)[0] != mine:
            raise ForbiddenError(
                f"input {url!r} points into the service's store outside your own prefix "
                f"({mine}/): only your own uploads and job files can be staged from there"
            )
        return key
    if p.scheme not in ("http", "https") or p.netloc not in hosts:
        return None
    path = unquote(p.path)
    if m := _UPLOAD_PATH.match(path):
        if int(m[1]) != user_id:
            raise ForbiddenError(f"input {url!r} is another user's upload")
        return f"{mine}/uploads/{m[2]}/{safe_relpath(m[3], 'upload name')}"
    if m := _JOB_FILE_PATH.match(path):
        if s.store.get(m[1], owner=user_id) is None:
            raise ForbiddenError(
                f"input {url!r} names job {m[1]!r}, which is not yours (or does not exist)"
            )
        return job_key(user_id, m[1], safe_relpath(m[2], "output"))
    return None


def check_grant(s: Service, user_name: str, url: str, sign: bool = True) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` input outside the store that ``user_name`` was granted.

    Raises ``ForbiddenError`` when no grant covers it, ``InvalidRequestError``
    for a key with ``.``/``..`` parts, and ``NoSigner`` when the server could
    not presign it (checked at submit by signing once: it costs no request).
    """
    bucket, key = parse_s3_url(url)
    if not key_is_plain(key):
        raise InvalidRequestError(
            f"input {url!r}: s3:// keys may not contain '.' or '..' parts (S3 servers and "
            "HTTP clients differ on whether they normalise them)"
        )
    if s.policy.grant_for(user_name, bucket, key) is None:
        raise ForbiddenError(
            f"input {url!r} is outside the service's store and no S3 grant covers it for user "
            f"{user_name!r}: workers hold no credentials for users' data, so the server presigns "
            'only what the operator granted ("s3_grants" in the server\'s policy file, --policy)'
        )
    if sign:
        presign_grant(s, url, bucket, key, 60)
    return bucket, key


def presign_grant(
    s: Service, url: str, bucket: str, key: str, expires_s: int,
    method: str = "GET", length: int | None = None, what: str = "input",
) -> str:  # fmt: skip
    """A presigned request of a granted place (a GET of an input; a PUT of ``length`` bytes
    to a destination, ``server/destinations.py``), or ``NoSigner`` saying why there is none."""
    # botocore is heavy to import and only a service with S3 grants signs: import it here.
    import botocore.exceptions as bx

    try:
        return s.grant_presigner().url(method, bucket, key, expires_s, length=length)
    except bx.NoCredentialsError:
        raise NoSigner(
            f"{what} {url!r} is granted, but the server has no S3 credentials to presign it "
            "(boto3's standard chain: AWS_ACCESS_KEY_ID..., AWS_PROFILE, an instance role)"
        ) from None
    except (bx.BotoCoreError, ValueError) as e:
        raise NoSigner(f"{what} {url!r}: the server cannot presign it: {e}") from None


def place_inputs(
    s: Service, user: dict[str, Any], urls: list[str], hosts: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Where each input comes from: store keys, and granted ``s3://`` inputs (to the user's name),
    both by input index (as text). Other ``s3://`` inputs are refused (403)."""
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
                    raise ForbiddenError(
                        f"input {url!r} is outside the service's store, not granted"
                    )
                bucket, k = check_grant(s, granted[str(i)], url, sign=False)
                item["fetch"] = presign_grant(s, url, bucket, k, GET_EXPIRES_S)
                endpoint = getattr(s.grant_presigner().client.meta, "endpoint_url", "")
                item["s3"] = {"bucket": bucket, "key": k, "endpoint": endpoint}
            except APIError as e:
                item["error"] = e.detail  # the runner fails the job with it
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
