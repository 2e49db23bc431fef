"""Queues and their limits.

A queue is a name that dask workers carry as a resource (``Test=1``), plus the
limits a job on it runs under. The defaults are sized to the machine the
server runs on and keep Kotta's names: ``Test`` is small, ``Prod`` is large.
A JSON file can replace them::

    {"Test": {"vcpus": 2, "memory": "4GB", "max_walltime_min": 1440},
     "Prod": {"vcpus": 32, "memory": "256GB", "max_walltime_min": 10080}}

and say how a contained job on each queue runs (all optional)::

    {"Secure": {"vcpus": 4, "memory": "8GB", "network": false, "max_processes": 256,
                "limit_cpu": true, "env": {"HDF5_USE_FILE_LOCKING": "FALSE"},
                "mounts": ["/data/reference", "/scratch:rw"]}}

``network: false`` gives each job an empty network namespace; ``max_processes``
bounds the processes of one job (default 2048); ``limit_cpu: true`` holds each
job to ``vcpus`` CPUs (a CFS quota), where by default a job may use idle CPUs
beyond them; ``env`` is added to each job's
environment; ``mounts`` are host paths each job sees (read-only unless ``:rw``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from dask.utils import format_bytes, parse_bytes

from .. import defaults as d
from ..claim import Sandbox
from ..errors import ConfigError

GiB = 1024**3


@dataclass(frozen=True)
class Queue:
    """One queue: its name and the limits of a job on it."""

    name: str
    vcpus: int
    memory_bytes: int
    max_walltime_min: float
    network: bool = True
    max_processes: int | None = None
    limit_cpu: bool = False
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[tuple[str, bool], ...] = ()  # (host path, writable)

    def to_json(self) -> dict:
        out = asdict(self)
        out["memory"] = format_bytes(self.memory_bytes)
        out["env"] = dict(self.env)
        out["mounts"] = [f"{p}:rw" if w else p for p, w in self.mounts]
        return out

    def sandbox(self) -> Sandbox:
        """What a runner needs to contain a job of this queue (see ``runner/isolation.py``)."""
        return {
            "network": self.network,
            "max_processes": self.max_processes,
            "limit_cpu": self.limit_cpu,
            "env": dict(self.env),
            "mounts": [{"path": p, "writable": w} for p, w in self.mounts],
        }


def _mount(item: object) -> tuple[str, bool]:
    if not isinstance(item, str):
        raise ValueError(f"a mount is a string 'PATH' or 'PATH:rw', not {item!r}")
    path, _, mode = item.partition(":")
    if not os.path.isabs(path) or mode not in ("", "ro", "rw"):
        raise ValueError(f"mount {item!r} must be an absolute path, then ':ro' or ':rw'")
    return os.path.normpath(path), mode == "rw"


def default_queues() -> dict[str, Queue]:
    total = psutil.virtual_memory().total
    cpus = os.cpu_count() or 1
    return {
        "Test": Queue("Test", min(2, cpus), min(4 * GiB, total // 4), 24 * 60),
        "Prod": Queue("Prod", cpus, max(total // 2, min(4 * GiB, total // 4)), 7 * 24 * 60),
    }


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, not {value!r}")
    return value


def load_queues(path: str | os.PathLike | None) -> dict[str, Queue]:
    """Queues from a JSON file, or the defaults when ``path`` is None."""
    if path is None:
        return default_queues()
    try:
        raw = json.loads(Path(path).read_text())
        queues = {}
        for name, q in raw.items():
            queues[name] = Queue(
                name=name,
                vcpus=int(q.get("vcpus", 1)),
                memory_bytes=parse_bytes(q["memory"])
                if isinstance(q.get("memory"), str)
                else int(q["memory"]),
                max_walltime_min=float(q.get("max_walltime_min", 24 * 60)),
                network=_flag(q.get("network", True), "network"),
                max_processes=int(q["max_processes"]) if q.get("max_processes") else None,
                limit_cpu=_flag(q.get("limit_cpu", False), "limit_cpu"),
                env=tuple((str(k), str(v)) for k, v in (q.get("env") or {}).items()),
                mounts=tuple(_mount(m) for m in q.get("mounts") or ()),
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"cannot read queue config {path}: {e}") from e
    if not queues:
        raise ConfigError(f"queue config {path} defines no queue")
    return queues


def _minutes(m: float) -> str:
    text = f"{m:g} min"
    return f"{text} ({m * 60:g} s)" if m < 1 else text


def limit_advice(
    reason: str, queue: str, walltime_min: float, queues: dict[str, Queue]
) -> str | None:
    """What a job killed at a limit should be told: the limit, and what would allow more.

    ``reason`` is what the runner reported; only ``walltime exceeded`` and
    ``memory limit exceeded`` get advice (None for any other). The queue
    suggested is the one that allows the most, when it allows more than the job had.
    """
    own = queues.get(queue)
    if reason == d.KILLED_WALLTIME:
        text = f"{reason}: killed after its walltime of {_minutes(walltime_min)}"
        if own is not None and own.max_walltime_min > walltime_min:
            return (
                f"{text}; queue {queue} allows up to {_minutes(own.max_walltime_min)}: "
                "resubmit with a longer walltime"
            )
        best = max(queues.values(), key=lambda q: q.max_walltime_min, default=None)
        if best is not None and best.max_walltime_min > walltime_min:
            return (
                f"{text}; queue {best.name} allows up to {_minutes(best.max_walltime_min)}: "
                f"resubmit with queue={best.name!r} and a longer walltime"
            )
        return f"{text}, the most any queue allows"
    if reason == d.KILLED_MEMORY:
        if own is None:
            return None
        text = f"{reason}: killed above queue {queue}'s memory limit of {format_bytes(own.memory_bytes)}"
        best = max(queues.values(), key=lambda q: q.memory_bytes)
        if best.memory_bytes > own.memory_bytes:
            return (
                f"{text}; queue {best.name} allows {format_bytes(best.memory_bytes)}: "
                f"resubmit with queue={best.name!r}"
            )
        return f"{text}, the most any queue allows"
    return None
