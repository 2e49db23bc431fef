"""dask-kotta: the Kotta job service and its client, built so Dask runs on it.

>>> from dask_kotta import Kotta, KottaJob, KOut, kottajob

Names are loaded on first use, so a dask worker that only runs jobs never
imports the client.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Kotta": "dask_kotta.client.connection",
    "KottaJob": "dask_kotta.client.job",
    "KOut": "dask_kotta.client.kout",
    "kottajob": "dask_kotta.client.decorator",
    "KottaError": "dask_kotta.errors",
    "KottaScheduler": "dask_kotta.dask.scheduler",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dask_kotta' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
