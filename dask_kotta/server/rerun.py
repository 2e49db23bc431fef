"""Resubmit: run an ended job again, as a new job that names the old one.

The old job's stored description and payload are copied as bytes (the server never
unpickles a payload) and go through the same checks as any submit: the queue and its
walltime, ``--max-keep``, the inputs' grants and hosts, ``--max-pending`` and the
storage quota, all as they are now. The new job's view has ``resubmit_of``.
"""

from __future__ import annotations

from typing import Any

from .. import defaults as d
from ..errors import ConflictError, NotFoundError
from ..jobspec import JobSpec
from ..store.objects import job_key
from .jobs import own_job, submit
from .service import Service


def description(job: dict[str, Any]) -> dict[str, Any]:
    """The job description (as ``POST /jobs`` takes it) that made ``job``."""
    raw = {k: v for k, v in job["spec"].items() if k in JobSpec.model_fields}
    raw.pop("idempotency_key", None)
    raw.update(
        name=job["name"], jobtype=job["jobtype"], queue=job["queue"],
        walltime_min=job["walltime_min"], retries=job["retries"],
        keep_days=None if job.get("keep_s") is None else job["keep_s"] / 86400,
    )  # fmt: skip
    return raw


async def resubmit(
    s: Service, user: dict[str, Any], job_id: str, hosts: set[str], idempotency_key: str | None
) -> dict[str, Any]:
    """The new job that runs the user's ended job ``job_id`` again.

    ``NotFoundError`` if the job is not the user's, ``ConflictError`` while it is pending
    or running. A repeated ``idempotency_key`` answers the job made the first time.
    """
    old = own_job(s, user["id"], job_id)
    if old["status"] not in d.TERMINAL_STATUSES:
        raise ConflictError(
            f"job {job_id} is {old['status']}: only an ended job can be resubmitted "
            "(wait for it to end, or cancel it)"
        )
    raw = description(old)
    if idempotency_key:
        raw["idempotency_key"] = idempotency_key
    payload = None
    if old["spec"].get("has_payload"):
        try:
            payload = s.objects.get_bytes(job_key(old["owner"], job_id, d.PAYLOAD_OBJECT))
        except NotFoundError:
            raise ConflictError(
                f"job {job_id}'s payload (its pickled function) is no longer stored: submit "
                "the call again"
            ) from None
    ((job, _created),) = await submit(s, user, [(raw, payload)], hosts, resubmit_of=job_id)
    return job
