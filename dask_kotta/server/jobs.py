"""What a user does with their own jobs: submit, wait for, read from and cancel them.

Each function takes the :class:`~.service.Service` and the user's id (or
record), and raises a domain error (``NotFoundError``, ``ConflictError``, ...)
that the app's one handler answers with. Another user's job answers exactly
like a missing one (``NotFoundError``).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from .. import defaults as d
from ..errors import (
    APIError,
    ConflictError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
    UnsafePathError,
    error_for_status,
)
from ..paths import safe_relpath
from ..store import retention
from ..store.objects import job_key
from .destinations import place_destinations
from .inputs import place_inputs
from .service import Service
from .validate import check_spec, input_host_refusals


def own_job(s: Service, user_id: int, job_id: str) -> dict[str, Any]:
    """The user's job ``job_id``; ``NotFoundError`` if there is none (or it is not theirs)."""
    job = s.store.get(job_id, owner=user_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}")
    return job


def _for_job(e: APIError | UnsafePathError, i: int) -> APIError:
    """The same refusal, naming which job of a batch it is about."""
    if isinstance(e, APIError):
        return error_for_status(e.status, f"job {i}: {e.detail}")
    return InvalidRequestError(f"job {i}: {e}")


async def submit(
    s: Service,
    user: dict[str, Any],
    items: list[tuple[dict[str, Any], bytes | None]],
    hosts: set[str],
    resubmit_of: str | None = None,
) -> list[tuple[dict[str, Any], bool]]:
    """Check, store and dispatch job descriptions with their payloads, in one transaction.

    ``hosts`` are the names this server is reached under (its own URLs name
    the store). Returns ``(job, created)`` per description, in order: a
    description whose ``idempotency_key`` this user already used gets the job
    made the first time, with ``created`` false. A refused description refuses
    the whole batch; the error names its index when the batch has more than one.
    ``resubmit_of``: the id of the job these run again (``rerun.resubmit``).
    """
    limit = s.config.max_pending
    if limit:
        pending = sum(q["pending"] for q in s.store.queue_counts(user["id"]).values())
        if pending + len(items) > limit:
            raise LimitExceededError(
                f"you have {pending} jobs pending and this submit adds {len(items)}: over the "
                f"limit of {limit} pending jobs per user (the operator's --max-pending); wait "
                "for some to start, or cancel some"
            )
    specs = []
    for i, (raw, payload) in enumerate(items):
        try:
            spec = check_spec(raw, s.queues, payload is not None, s.config.max_keep_days)
            # 403 for an input in another user's part of the store or in an ungranted bucket
            input_keys, granted = place_inputs(s, user, spec["inputs"], hosts)
            # 403 for a destination no write grant of this user covers, or in the store
            if spec.get("destinations"):
                place_destinations(s, user, spec["destinations"])
        except (APIError, UnsafePathError) as e:
            if len(items) == 1:
                raise
            raise _for_job(e, i) from None
        if input_keys:
            spec["input_keys"] = input_keys
        if granted:
            spec["granted_inputs"] = granted
        if spec.get("destinations"):
            # Whose grants allowed them: checked again, for this user, when the job ends.
            spec["granted_destinations"] = user["name"]
        spec["has_payload"] = payload is not None
        if resubmit_of is not None:
            spec["resubmit_of"] = resubmit_of  # a column of its own, not part of the spec
        specs.append(spec)
    # http(s) inputs other than the service's own must not lead into the service's network.
    refused = await input_host_refusals(
        (
            (i, url)
            for i, spec in enumerate(specs)
            for j, url in enumerate(spec["inputs"])
            if str(j) not in spec.get("input_keys", {})
        ),
        list(s.policy.allow_input_networks),
    )
    if refused is not None:
        i, why = refused
        raise InvalidRequestError((f"job {i}: " if len(items) > 1 else "") + why)
    payloads = [payload for _, payload in items]
    stored = sum(len(p) for p in payloads if p is not None)
    if stored and s.config.max_storage_bytes:
        args = (user["id"], stored, s.config.max_storage_bytes, "this submit's payloads")
        if s.usage.counted(user["id"]):
            s.usage.check(*args)
        else:  # the user's first count lists their objects: not on the event loop
            await asyncio.to_thread(s.usage.check, *args)

    def write_payloads(rows: list[tuple[dict[str, Any], bool]]) -> list[dict[str, Any]]:
        small = []
        for (job, created), payload in zip(rows, payloads, strict=True):
            if created and payload is not None:
                key = job_key(user["id"], job["id"], d.PAYLOAD_OBJECT)
                if s.objects.keeps(key, payload):
                    small.append((key, payload))  # a row of this transaction
                else:
                    s.objects.inner.put_bytes(key, payload)
        return s.objects.blobs.rows(small)

    rows = s.store.insert_jobs(user["id"], specs, before_commit=write_payloads)
    for job, created in rows:
        if created:
            s.engine.dispatch(job["id"], job["queue"])
    return rows


async def wait(
    s: Service, user_id: int, ids: list[str], timeout: float, any_: bool
) -> list[dict[str, Any]]:
    """The jobs ``ids`` once any (or all) of them ended, or as they are after ``timeout`` s."""
    deadline = time.monotonic() + min(max(timeout, 0.0), d.LONGPOLL_MAX_S)
    want = list(dict.fromkeys(ids))
    ended: dict[str, dict[str, Any]] = {}  # a terminal record never changes again: read it once
    while True:
        todo = [i for i in want if i not in ended]
        jobs = s.store.get_many(todo, user_id) if todo else []
        if len(jobs) != len(todo):
            missing = sorted(set(todo) - {j["id"] for j in jobs})
            raise NotFoundError(f"no job {missing[0]!r}")
        live: dict[str, dict[str, Any]] = {}
        for j in jobs:
            (ended if j["status"] in d.TERMINAL_STATUSES else live)[j["id"]] = j
        left = deadline - time.monotonic()
        if (ended if any_ else not live) or left <= 0 or s.notifier.closed:
            return [ended.get(i) or live[i] for i in want]
        # Any: wake on any of them. All: on the last one still running (jobs mostly end in
        # the order they were submitted), so a batch of thousands is re-read a few times,
        # not once per job that ends.
        running = [i for i in want if i in live]
        await s.notifier.wait(running if any_ else running[-1:], min(left, 1.0))


def inline_results(s: Service, jobs: list[dict[str, Any]]) -> dict[str, str]:
    """Base64 of the small results of ended jobs: those kept in the database (one read for
    all, whatever the object store), and those up to ``INLINE_MAX_BYTES`` in a local store."""
    keys = {
        j["id"]: job_key(j["owner"], j["id"], d.RESULT_OBJECT)
        for j in jobs
        if j["status"] in d.TERMINAL_STATUSES and j["has_result"]
    }
    kept = s.objects.small_bytes(list(keys.values())) if keys else {}
    out = {}
    for job_id, key in keys.items():
        data = kept.get(key)
        if data is None:
            path = s.objects.inner.local_path(key)
            if path is None or path.stat().st_size > d.INLINE_MAX_BYTES:
                continue
            data = path.read_bytes()
        out[job_id] = base64.b64encode(data).decode()
    return out


def result_key(s: Service, user_id: int, job_id: str) -> str:
    """The store key of a python job's pickled result; ``NotFoundError`` until it has one."""
    job = own_job(s, user_id, job_id)
    if not job["has_result"]:
        raise NotFoundError(f"job {job_id} has no result (status {job['status']})")
    return job_key(user_id, job_id, d.RESULT_OBJECT)


def output_key(s: Service, user_id: int, job_id: str, name: str) -> tuple[str, str]:
    """``(key, file name)`` of one of a job's outputs; ``NotFoundError`` if it has no such one."""
    job = own_job(s, user_id, job_id)
    name = safe_relpath(name, "output")
    if name not in {o["name"] for o in job["outputs"]}:
        raise NotFoundError(f"job {job_id} has no output {name!r} (status {job['status']})")
    return job_key(user_id, job_id, name), name.rsplit("/", 1)[-1]


async def cancel(s: Service, user_id: int, job_id: str) -> dict[str, Any]:
    """Cancel a pending or running job and return it; ``ConflictError`` if it already ended."""
    own_job(s, user_id, job_id)
    if not s.store.cancel(job_id, user_id):
        job = s.store.get(job_id)
        status = job["status"] if job is not None else "?"
        raise ConflictError(f"job {job_id} already ended as {status}; nothing was changed")
    await s.engine.cancel(job_id)
    job = s.store.get(job_id)
    if job is None:  # deleted by its owner the moment it ended
        raise NotFoundError(f"no job {job_id!r}")
    s.finished(job)
    return job


def delete(s: Service, user_id: int, job_id: str) -> None:
    """Delete an ended job of ``user_id`` and its files; ``ConflictError`` while it runs."""
    job = own_job(s, user_id, job_id)
    if not retention.delete_jobs(s.store.retention, s.objects, [job_id], user_id):
        raise ConflictError(
            f"job {job_id} is {job['status']}: only an ended job can be deleted (cancel it first)"
        )
    s.usage.forget(user_id)  # its room counts as free at once
