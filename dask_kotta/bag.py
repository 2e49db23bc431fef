"""``dask_kotta.bag``: bags over S3 whose partitions are staged on Kotta workers.

>>> import dask_kotta.bag as kb
>>> words = kb.read_text('s3://bucket/docs/*.txt', files_per_partition=10)
>>> sample, blocks = kb.read_bytes('s3://bucket/logs/*.csv', delimiter=b'\\n')

See :mod:`dask_kotta.dask.bag` and :mod:`dask_kotta.dask.byteranges`.
"""

from .dask.bag import NoFilesError, from_urls, list_urls, read_text
from .dask.byteranges import read_bytes

__all__ = ["read_text", "read_bytes", "from_urls", "list_urls", "NoFilesError"]
