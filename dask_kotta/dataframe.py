"""``dask_kotta.dataframe``: Dask DataFrames over S3 whose partitions are staged on Kotta workers.

>>> import dask_kotta.dataframe as kd
>>> df = kd.read_parquet('s3://bucket/trips/*.parquet', columns=['vendor', 'fare'])
>>> rows = kd.read_csv('s3://bucket/logs/*.csv', blocksize='64 MiB')
>>> kd.to_parquet(df, 's3://bucket/out/', compute_kwargs={'scheduler': sched})  # doctest: +SKIP

See :mod:`dask_kotta.dask.dataframe`.
"""

from .dask.bag import NoFilesError
from .dask.dataframe import (
    ColumnNotFoundError,
    UnsupportedWriteError,
    read_csv,
    read_parquet,
    read_table,
    to_parquet,
)

__all__ = [
    "read_parquet",
    "read_csv",
    "read_table",
    "to_parquet",
    "NoFilesError",
    "ColumnNotFoundError",
    "UnsupportedWriteError",
]
