"""``dask_kotta.bag``: bags over S3 whose partitions are staged on Kotta workers.

>>> import dask_kotta.bag as kb
>>> words = kb.read_text('s3://bucket/docs/*.txt', files_per_partition=10)

See :mod:`dask_kotta.dask.bag`.
"""

from .dask.bag import NoFilesError, from_urls, list_urls, read_text

__all__ = ["read_text", "from_urls", "list_urls", "NoFilesError"]
