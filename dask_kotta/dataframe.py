"""``dask_kotta.dataframe``: Dask DataFrames over S3 whose partitions are staged on Kotta workers.

>>> import dask_kotta.dataframe as kd
>>> df = kd.read_parquet('s3://bucket/trips/*.parquet', columns=['vendor', 'fare'])
>>> rows = kd.read_csv('s3://bucket/logs/*.csv', blocksize='64 MiB')

See :mod:`dask_kotta.dask.dataframe`.
"""

from .dask.bag import NoFilesError
from .dask.dataframe import ColumnNotFoundError, read_csv, read_parquet, read_table

__all__ = ["read_parquet", "read_csv", "read_table", "NoFilesError", "ColumnNotFoundError"]
