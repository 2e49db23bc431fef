"""Listing a user's jobs: pages by cursor with filters, counts per status, and where each
pending job stands in its queue.

``GET /api/v1/jobs?limit=&status=&queue=&name=&before=`` answers ``{"jobs", "next"}``:
newest first, ``next`` the ``before`` of the following page (null on the last). ``status``
is a comma list, ``running`` standing for the three active statuses; ``name`` matches a
substring. ``GET /api/v1/jobs/counts`` answers ``{"counts": {status: n}}``. The reads are
``store/listing.py``'s; this router is included before ``routes_jobs`` so
``/jobs/counts`` is not taken for a job id.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from .. import defaults as d
from ..store.listing import parse_statuses
from .deps import User, svc
from .openapi import for_user
from .views import job_view

router = APIRouter(prefix="/api/v1")


async def slots_now(request: Request) -> dict[str, int] | None:
    """Job slots per queue now; None if the scheduler cannot be asked."""
    try:
        return await svc(request).engine.capacity()
    except Exception:  # the scheduler is unreachable: a view still answers, without reasons
        return None


async def views_with_places(
    request: Request, owner: int, found: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The views of ``found``, each pending one with its ``position`` in its queue and,
    where no worker serves its queue now, a ``reason`` saying so."""
    s = svc(request)
    base = str(request.base_url)
    views = [job_view(j, base, s.objects) for j in found]
    pending = [j for j in found if j["status"] == d.PENDING]
    if not pending:
        return views
    # Off the event loop: behind 100,000 pending jobs a position is tens of ms of SQL, and
    # the loop also holds every long poll and claim.
    places = await run_in_threadpool(s.store.positions, owner, pending)
    slots = await slots_now(request)
    for view in views:
        if view["status"] != d.PENDING:
            continue
        view["position"] = places.get(view["id"])
        if slots is not None and not slots.get(view["queue"]):
            view["reason"] = (
                f"no worker serves queue {view['queue']!r} now: it waits for one "
                "(`dask-kotta worker --queue NAME=N`)"
            )
    return views


@router.get("/jobs", summary="Your jobs, newest first, a page at a time", responses=for_user(400))
async def list_jobs(
    request: Request,
    user: User,
    limit: int = Query(50, ge=1, le=10_000),
    status: str | None = Query(
        None, description="Comma-separated statuses; `running` = staging_inputs, processing, "
        "staging_outputs",
    ),
    queue: str | None = Query(None, description="Only this queue's jobs"),
    name: str | None = Query(None, description="Only jobs whose name contains this"),
    before: str | None = Query(
        None, description="The `next` of an earlier page: the jobs submitted before its last"
    ),
) -> dict:  # fmt: skip
    """``{"jobs": [...], "next": cursor or null}``. Passing ``next`` as ``before`` gives the
    following page; jobs submitted meanwhile do not shift it (they come first)."""
    found, nxt = await run_in_threadpool(
        svc(request).store.page,
        user["id"], limit, parse_statuses(status), queue or None, name or None, before or None,
    )  # fmt: skip
    return {"jobs": await views_with_places(request, user["id"], found), "next": nxt}


@router.get(
    "/jobs/counts", summary="How many of your jobs are in each status", responses=for_user()
)
def counts(request: Request, user: User) -> dict:
    """``{"counts": {status: n}}``, every status named."""
    return {"counts": svc(request).store.status_counts(user["id"])}
