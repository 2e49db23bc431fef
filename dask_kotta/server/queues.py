"""Queues and their limits.

A queue is a name that dask workers carry as a resource (``Test=1``), plus the
limits a job on it runs under. The defaults are sized to the machine the
server runs on and keep Kotta's names: ``Test`` is small, ``Prod`` is large.
A JSON file can replace them::

    {"Test": {"vcpus": 2, "memory": "4GB", "max_walltime_min": 1440},
     "Prod": {"vcpus": 32, "memory": "256GB", "max_walltime_min": 10080}}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from dask.utils import format_bytes, parse_bytes

from ..errors import ConfigError

GiB = 1024**3


@dataclass(frozen=True)
class Queue:
    """One queue: its name and the limits of a job on it."""

    name: str
    vcpus: int
    memory_bytes: int
    max_walltime_min: float

    def to_json(self) -> dict:
        out = asdict(self)
        out["memory"] = format_bytes(self.memory_bytes)
        return out


def default_queues() -> dict[str, Queue]:
    total = psutil.virtual_memory().total
    cpus = os.cpu_count() or 1
    return {
        "Test": Queue("Test", min(2, cpus), min(4 * GiB, total // 4), 24 * 60),
        "Prod": Queue("Prod", cpus, max(total // 2, min(4 * GiB, total // 4)), 7 * 24 * 60),
    }


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
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"cannot read queue config {path}: {e}") from e
    if not queues:
        raise ConfigError(f"queue config {path} defines no queue")
    return queues
