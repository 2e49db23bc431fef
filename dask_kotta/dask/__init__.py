"""Dask on Kotta: a scheduler whose workers are Kotta jobs, and bags over S3.

>>> from dask_kotta.dask import KottaScheduler, read_text, from_urls

Names load on first use: a job that only runs a fragment
(``dask_kotta.dask.remote``) never imports the client.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "KottaScheduler": "dask_kotta.dask.scheduler",
    "RunStats": "dask_kotta.dask.scheduler",
    "read_text": "dask_kotta.dask.bag",
    "from_urls": "dask_kotta.dask.bag",
    "list_urls": "dask_kotta.dask.bag",
    "AnnotationError": "dask_kotta.dask.annotations",
    "NoQueueFitsError": "dask_kotta.dask.annotations",
    "DataFrameAnnotationError": "dask_kotta.dask.annotations",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dask_kotta.dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
