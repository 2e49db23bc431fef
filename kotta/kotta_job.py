"""``kotta.kotta_job.KottaJob``, the original module path of the job class."""

from dask_kotta import KottaJob

__all__ = ["KottaJob"]
