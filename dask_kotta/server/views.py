"""How a job looks in the API."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from ..store.objects import ObjectStore, job_prefix


def elapsed(job: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since the job started running while it runs; its run time (start to end)
    once it ended; None if it never started."""
    if job["started_at"] is None:
        return None
    if job["ended_at"] is not None:
        return max(0.0, job["ended_at"] - job["started_at"])
    if job["status"] == "pending":  # taken back from a lost worker: not running now
        return None
    return max(0.0, (time.time() if now is None else now) - job["started_at"])


def job_view(job: dict[str, Any], base_url: str, objects: ObjectStore) -> dict[str, Any]:
    """A job as the API shows it. ``position`` is filled where the route computes it (one
    job or a page: :mod:`.listing`); elsewhere it is null."""
    spec = job["spec"]
    base = base_url.rstrip("/")
    outputs = []
    for out in job["outputs"]:
        key = f"{job_prefix(job['owner'], job['id'])}/{out['name']}"
        outputs.append(
            {
                "name": out["name"],
                "size": out.get("size"),
                # The server's URL on every store: it never expires, and on S3 it redirects
                # to a fresh presigned URL, so a view need not presign every output it lists.
                "url": f"{base}/api/v1/jobs/{job['id']}/files/{quote(out['name'])}",
                "store_url": objects.store_url(key),
            }
        )
    return {
        "id": job["id"],
        "name": job["name"],
        "jobtype": job["jobtype"],
        "queue": job["queue"],
        "walltime_min": job["walltime_min"],
        "status": job["status"],
        "reason": job["reason"],
        "traceback": job["traceback"],
        "retries": job["retries"],
        # Days the job is kept after it ends, as it asked; null: the server's --keep, 0: for ever.
        "keep_days": None if job.get("keep_s") is None else job["keep_s"] / 86400,
        "attempt": job["attempt"],
        "failures": job["failures"],
        "requeues": job["requeues"],
        "submitted_at": job["submitted_at"],
        "started_at": job["started_at"],
        "ended_at": job["ended_at"],
        "elapsed": elapsed(job),
        "position": None,
        "timings": {
            "stage_in": job["t_stage_in"],
            "run": job["t_run"],
            "stage_out": job["t_stage_out"],
        },
        "outputs": outputs,
        "has_result": bool(job["has_result"]),
        "worker": job["worker"].partition(" ")[0],  # the host; not the worker's dask address
        "inputs": spec.get("inputs", []),
        "declared_outputs": spec.get("outputs", []),
        # {file: s3:// place} the job writes once it succeeded (granted by s3_write_grants)
        "destinations": spec.get("destinations") or {},
        "stdout": spec.get("stdout"),
        "stderr": spec.get("stderr"),
        "script_name": spec.get("script_name"),
        "executable": spec.get("executable"),
        "args": spec.get("args") or [],
        "requirements": spec.get("requirements"),
        "annotations": spec.get("annotations") or {},
        # The job this one runs again (`dask-kotta resubmit`); null for a job submitted as new.
        "resubmit_of": job.get("resubmit_of"),
    }
