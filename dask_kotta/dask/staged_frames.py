"""The worker side of ``dask_kotta.dataframe`` and ``read_bytes``: partitions read from staged files.

Each partition's *argument* (a :class:`Block` or a :class:`ParquetPart`)
carries its URLs in ``__kotta_inputs__``: ``dd.from_map`` gives every
partition the same function and its own argument, so the URLs cannot ride in
the function as the bag's do; ``graph.task_inputs`` looks in both. On Kotta the
runner staged the objects into the job's working directory; under any other
scheduler :class:`~dask_kotta.dask.staged.Fetcher` downloads them, so every
scheduler gives the same frames.

The parsing itself is Dask's (``read_parquet_part`` on a local filesystem,
``dask.dataframe.io.csv._read_csv``, fsspec's ``read_block``), so a partition is
exactly what ``dd.read_parquet``/``dd.read_csv`` would have made of the same
bytes. Pickled by value like :mod:`dask_kotta.dask.staged`: nothing here
imports dask-kotta on the worker (dask, pandas and pyarrow, which the task
needs anyway, are imported inside the calls), and nothing keeps state at
module level.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any
from urllib.parse import urlparse

from ..s3client import s3_client
from .staged import COMPRESSION_BY_SUFFIX, OPENERS, Fetcher


class Block:
    """A byte range of one object: ``length`` None means the whole object.

    With a ``delimiter`` the range is moved to delimiter boundaries exactly as
    ``dask.bytes.read_bytes`` does (fsspec's ``read_block``): it starts after the
    first delimiter at or past ``offset`` (unless ``offset`` is 0) and ends after
    the first delimiter at or past ``offset + length``.
    """

    def __init__(self, url: str, offset: int, length: int | None, delimiter: bytes | None,
                 compression: str | None = None):  # fmt: skip
        self.__kotta_inputs__ = (url,)
        self.url, self.offset, self.length = url, offset, length
        self.delimiter, self.compression = delimiter, compression

    def read(self, fetcher: Fetcher | None = None) -> bytes:
        """The block's bytes, from the staged file (or a download off Kotta)."""
        path = (fetcher or Fetcher()).local_path(self.url)
        comp = self.compression
        if comp == "infer":
            comp = COMPRESSION_BY_SUFFIX.get(os.path.splitext(self.url)[1])
        opener = OPENERS[comp] if comp else open
        with opener(path, "rb") as f:
            if self.offset == 0 and self.length is None:
                return f.read()
            from fsspec.utils import read_block

            return read_block(f, self.offset, self.length, self.delimiter)

    def __repr__(self) -> str:
        return f"Block({self.url!r}, {self.offset}, {self.length})"


class ReadBlock:
    """The task of one ``read_bytes`` block: its bytes. The URL rides in ``__kotta_inputs__``."""

    def __init__(self, block: Block):
        self.block = block
        self.__kotta_inputs__ = block.__kotta_inputs__

    def __call__(self) -> bytes:
        return self.block.read()

    def __repr__(self) -> str:
        return f"ReadBlock({self.block!r})"


class CsvPart:
    """One ``read_csv`` partition: a block and where it lies in its file."""

    def __init__(self, block: Block, is_first: bool, is_last: bool, path: str | None = None):
        self.block = block
        self.is_first, self.is_last, self.path = is_first, is_last, path
        self.__kotta_inputs__ = block.__kotta_inputs__

    def __repr__(self) -> str:
        return f"CsvPart({self.block!r})"


class ReadCsv:
    """``from_map``'s function for ``read_csv``: parses a :class:`CsvPart` as dask's reader does.

    ``columns`` is what query planning projects the frame to.
    """

    def __init__(self, reader: str, **options: Any):
        self.reader = reader  # "read_csv" or "read_table": pandas' function, found on the worker
        self.options = options

    def __call__(self, part: CsvPart, columns: list | None = None) -> Any:
        import pandas as pd
        from dask.dataframe.io.csv import _read_csv

        return _read_csv(
            part.block.read(),
            (part.path, part.is_first, part.is_last),
            columns,
            reader=getattr(pd, self.reader),
            **self.options,
        )

    def __repr__(self) -> str:
        return f"ReadCsv({self.reader})"


class ParquetPart:
    """One ``read_parquet`` partition: ``(url, row groups or None)`` pieces, read in order."""

    def __init__(self, pieces: list[tuple[str, list[int] | None]]):
        self.pieces = pieces
        self.__kotta_inputs__ = tuple(dict.fromkeys(url for url, _ in pieces))

    def __repr__(self) -> str:
        return f"ParquetPart({self.pieces!r})"


class ReadParquet:
    """``from_map``'s function for ``read_parquet``: dask's ``read_parquet_part`` on local files.

    ``meta``, ``index`` and ``common_kwargs`` are what dask's own reader would
    pass (``schema``, ``filters``, ``convert_string``...), made on the client
    from the footers.
    """

    def __init__(self, meta: Any, index: Any, common_kwargs: dict[str, Any]):
        self.meta, self.index, self.common_kwargs = meta, index, common_kwargs

    def __call__(self, part: ParquetPart, columns: list | None = None) -> Any:
        from dask.dataframe.io.parquet.arrow import ArrowDatasetEngine
        from dask.dataframe.io.parquet.core import read_parquet_part
        from fsspec.implementations.local import LocalFileSystem

        fetcher = Fetcher()
        pieces = [((fetcher.local_path(url), rgs, []), {}) for url, rgs in part.pieces]
        cols = list(self.meta.columns) if columns is None else list(columns)
        index = list(self.index) if isinstance(self.index, list | tuple) else self.index
        return read_parquet_part(
            LocalFileSystem(), ArrowDatasetEngine, self.meta, pieces, cols, index,
            dict(self.common_kwargs),
        )  # fmt: skip

    def __repr__(self) -> str:
        return "ReadParquet()"


#: Where a job leaves the files its destinations take (``kotta-outputs/<hash>/<file>``).
OUTPUTS_DIR = "kotta-outputs"


class WriteParquet:
    """The task that writes one partition of ``to_parquet`` to ``url``, as Dask's writer would.

    It declares ``(file, url)`` in ``__kotta_outputs__``: ``KottaScheduler`` lists it in the
    job's ``destinations``, the task writes the file into the job's working directory with
    Dask's own ``write_partition`` (local filesystem), and the runner PUTs it to ``url``
    once the job succeeded, with a URL the server presigned for that key alone. The task
    itself never writes to S3 on Kotta, so it needs no credentials and holds none.

    Under any other scheduler (no ``KOTTA_WORKDIR``) it writes to a temporary directory
    and uploads with boto3's standard chain, as the readers download: the credentials of
    the process that runs it (your own, under ``scheduler='sync'``).
    """

    def __init__(self, url: str, name: str, filename: str, write_kwargs: dict[str, Any]):
        self.url, self.name, self.filename = url, name, filename
        self.write_kwargs = write_kwargs
        self.__kotta_outputs__ = ((name, url),)
        self.__name__ = "to-parquet-kotta"  # (dask names a delayed call's key after it)

    def _write(self, df: Any, directory: str) -> list:
        from dask.dataframe.io.parquet.arrow import ArrowDatasetEngine
        from fsspec.implementations.local import LocalFileSystem

        return ArrowDatasetEngine.write_partition(
            df, directory, LocalFileSystem(), self.filename, [], False, **self.write_kwargs
        )

    def __call__(self, df: Any) -> list:
        workdir = os.environ.get("KOTTA_WORKDIR")
        if workdir:
            target = os.path.join(workdir, self.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            return self._write(df, os.path.dirname(target))
        with tempfile.TemporaryDirectory(prefix="kotta-to-parquet-") as tmp:
            out = self._write(df, tmp)
            p = urlparse(self.url)
            s3_client().upload_file(os.path.join(tmp, self.filename), p.netloc, p.path[1:])
        return out

    def __repr__(self) -> str:
        return f"WriteParquet({self.url!r})"
