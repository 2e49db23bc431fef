"""Where a job's files may be written outside the service's store: declared, granted destinations.

A job declares ``destinations`` (``{file in its directory: "s3://bucket/key"}``,
``JobSpec``); ``dask_kotta.dataframe.to_parquet`` declares one per partition.
Writing to a user's bucket is a separate permission from reading it:

- At submit each destination must be covered by a *write* grant of the
  operator's policy for the submitting user (``s3_write_grants``; read grants
  do not count, nor another user's grants), and may not point into the
  service's own store; else the whole submit is refused (403 naming the place
  and the grant it lacks). ``POST /api/v1/destinations/check`` answers the
  same question without a job, so a client can ask before it runs anything.
- When the job's process has ended, and only if it succeeded, the runner asks
  for an upload plan per destination file (``POST
  /api/v1/runner/jobs/{id}/destinations``): the grant is checked again, by the
  policy in force, and the server presigns **one PUT of exactly that key and
  that file's size**, valid for a few hours. The runner then PUTs the file.

Why a presigned PUT per declared key, and not a copy by the server after the job:
the bytes go once, from the worker straight to the bucket (no second copy in the
store, no server bandwidth or quota spent on them), and the server's credentials
never leave it. What a runner holds is good for one key and one size only: it can
touch nothing else in the bucket, not list it, not delete. The URL never reaches
the job's own process either: the runner asks for it after the process (and its
whole PID namespace) has ended, so nothing the user's code ran can see or reuse it.
One PUT rather than a multipart upload: an unfinished multipart upload would leave
hidden parts in the user's bucket, outside the declared keys; S3 takes up to 5 GiB
in one PUT, which is the limit per file here.
"""

from __future__ import annotations

from typing import Any

from ..errors import APIError, ForbiddenError, InvalidRequestError, PayloadTooLargeError
from ..jobspec import destination_parts
from ..paths import safe_relpath
from ..store.s3 import PUT_EXPIRES_S
from .inputs import presign_grant
from .service import Service

#: The largest file one presigned PUT may write (S3's limit for a single PUT).
MAX_DESTINATION_BYTES = 5 * 1024**3


def check_destination(s: Service, user_name: str, url: str, sign: bool = True) -> tuple[str, str]:
    """``(bucket, key)`` of a destination ``user_name``'s jobs may write; else a refusal.

    ``InvalidRequestError`` (400) for a malformed URL, ``ForbiddenError`` (403) for a
    place in the service's store or one no write grant of the user covers, ``NoSigner``
    (500) when the server cannot presign (checked by signing once: no request is made).
    """
    try:
        bucket, key = destination_parts(url)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    if s.objects.key_for_url(url) is not None:
        raise ForbiddenError(
            f"destination {url!r} is inside the service's own store: a job's files reach "
            "the store as its outputs (outputs=), never as destinations"
        )
    if s.policy.write_grant_for(user_name, bucket, key) is None:
        read = s.policy.grant_for(user_name, bucket, key) is not None
        raise ForbiddenError(
            f"destination {url!r}: no write grant covers it for user {user_name!r}"
            + (" (a read grant does, but reading does not allow writing)" if read else "")
            + ". Jobs may write only where the operator granted it: "
            f'"s3_write_grants": {{"{user_name}": ["s3://{bucket}/..."]}} in the server\'s '
            "policy file (--policy)"
        )
    if sign:
        presign_put(s, url, bucket, key, 0, 60)
    return bucket, key


def presign_put(s: Service, url: str, bucket: str, key: str, size: int, expires_s: int) -> str:
    """A presigned PUT of exactly ``size`` bytes to ``s3://bucket/key``, or ``NoSigner``."""
    return presign_grant(s, url, bucket, key, expires_s, "PUT", size, "destination")


def check_destinations(s: Service, user_name: str, urls: list[str]) -> None:
    """Refuse (as submit would) the first of ``urls`` the user's jobs may not write."""
    # Signing shows the server has credentials: once per request is enough (a job of
    # thousands of partitions would otherwise pay a signature per file at submit).
    for i, url in enumerate(urls):
        check_destination(s, user_name, url, sign=i == 0)


def place_destinations(s: Service, user: dict[str, Any], destinations: dict[str, str]) -> None:
    """Check every destination of a job being submitted (see :func:`check_destination`)."""
    check_destinations(s, user["name"], list(destinations.values()))


def destination_plans(
    s: Service, job: dict[str, Any], files: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    """One ``{"mode": "put", "url"}`` per ``(name, size)`` of a job's declared destinations.

    403 for a name the job did not declare, or whose grant the policy in force no longer
    has; 413 for a file over :data:`MAX_DESTINATION_BYTES`.
    """
    spec = job["spec"]
    declared = spec.get("destinations") or {}
    user_name = spec.get("granted_destinations")
    plans = []
    for name, size in files:
        url = declared.get(safe_relpath(name, "destination file"))
        if url is None or not user_name:
            raise ForbiddenError(f"{name!r} is not a declared destination of job {job['id']}")
        if size > MAX_DESTINATION_BYTES:
            raise PayloadTooLargeError(
                f"destination {url!r}: {size} bytes is over the {MAX_DESTINATION_BYTES} bytes "
                "one PUT may write; write smaller files (more partitions)"
            )
        try:
            bucket, key = check_destination(s, user_name, url, sign=False)
        except APIError as e:
            raise error_again(e) from None
        plans.append({"mode": "put", "url": presign_put(s, url, bucket, key, size, PUT_EXPIRES_S)})
    return plans


def error_again(e: APIError) -> APIError:
    """The refusal of a destination granted at submit and not any more, as such."""
    return type(e)(f"{e.detail} (checked again as the job ended, by the policy in force)", e.status)
