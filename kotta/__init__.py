"""The documented Kotta import path, re-exported from ``dask_kotta``."""

from dask_kotta import Kotta, KottaJob, KOut, kottajob

__all__ = ["Kotta", "KottaJob", "KOut", "kottajob"]
