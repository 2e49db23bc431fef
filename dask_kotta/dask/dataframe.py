"""Dask DataFrames over object storage whose partitions are staged on the worker, not the client.

>>> import dask_kotta.dataframe as kd
>>> df = kd.read_parquet('s3://bucket/trips/*.parquet', columns=['vendor', 'fare'])
>>> df.groupby('vendor').fare.mean().compute(scheduler=KottaScheduler(konn))  # doctest: +SKIP

The client lists keys (boto3, as ``dask_kotta.bag``) and reads what
planning needs, never the data: each Parquet file's footer (one or two
ranged GETs from its end) and, for CSV, a sample of the first object (as
``dd.read_csv`` does, 256 kB). A partition is a file, a row group or a group
of them (Parquet), or a file or a byte range of one (CSV, moved to line
boundaries as Dask does). Each partition's argument carries its URLs in
``__kotta_inputs__``: ``KottaScheduler`` stages them into the job that runs
it, and under any other scheduler the task downloads them itself
(:mod:`dask_kotta.dask.staged_frames`).

The frames are built with ``dd.from_map``, so query planning works as for
Dask's readers (a column selection after the read is pushed into it), and
each partition is parsed by Dask's own code on the worker: the same frames as
``dd.read_parquet``/``dd.read_csv`` give under ``scheduler='sync'``.

:func:`to_parquet` goes the other way: each partition's task writes its file
with Dask's own ``write_partition`` into the job's working directory and
declares it (``__kotta_outputs__``); the runner PUTs it to
``s3://bucket/prefix/part.N.parquet`` once the job succeeded, with a URL the
server presigned for that one key, if the operator granted the user writing
there (``s3_write_grants``). Workers and jobs hold no S3 credentials.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any
from urllib.parse import urlparse

import cloudpickle
import dask
import dask.dataframe as dd
import pandas as pd
from dask.utils import parse_bytes

from ..errors import KottaError
from ..jobspec import destination_parts
from . import staged_frames
from .bag import NoFilesError, list_objects
from .byteranges import RangeReader, infer_compression, plan_blocks
from .frames import UnsupportedWriteError
from .staged_frames import OUTPUTS_DIR, CsvPart, ParquetPart, ReadCsv, ReadParquet, WriteParquet

# Worker-side code travels by value (see staged.py); staged.py and the modules it uses
# are registered by dask_kotta.dask.bag, imported above.
cloudpickle.register_pickle_by_value(staged_frames)

__all__ = [
    "read_parquet", "read_csv", "read_table", "to_parquet", "ColumnNotFoundError",
    "UnsupportedWriteError",
]  # fmt: skip

#: Bytes read from a Parquet object's end in one GET: most footers fit.
FOOTER_GUESS = 16 * 1024
#: Footers read at once.
FOOTER_THREADS = 16
PARQUET_SUFFIXES = (".parq", ".parquet", ".pq")


class ColumnNotFoundError(KottaError, KeyError):
    """A column asked for (``columns=``, ``filters=``) is not in the data."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- Parquet: planning from footers -----------------------------------------------------------


def read_footer(reader: RangeReader, url: str, size: int | None) -> Any:
    """The ``pyarrow.parquet.FileMetaData`` of one object, from ranged GETs of its end."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    guess = FOOTER_GUESS if size is None else min(size, FOOTER_GUESS)
    tail = reader.read(url, -guess, 0)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise ValueError(f"{url} is not a Parquet file (no PAR1 magic at its end)")
    (n,) = struct.unpack("<I", tail[-8:-4])
    if n + 8 > len(tail):
        if size is None:
            raise ValueError(f"{url}: a footer over {FOOTER_GUESS} bytes needs the object's size")
        tail = reader.read(url, size - (n + 8), size - len(tail)) + tail
    # pyarrow reads metadata from a file's end; the footer with a leading magic is such a file.
    return pq.ParquetFile(pa.BufferReader(b"PAR1" + tail[-(n + 8) :])).metadata


def plan_parquet(
    footers: list[tuple[str, Any]],
    split_row_groups: bool | int | str = "infer",
    blocksize: int | None = None,
) -> list[list[tuple[str, list[int] | None]]]:
    """Each partition's ``(url, row groups)`` pieces (row groups None: the whole file).

    ``split_row_groups``: False, a file per partition; True, a row group per
    partition; an int ``n``, ``n`` row groups of a file per partition;
    ``'adaptive'``, consecutive row groups of a file up to ``blocksize``
    uncompressed bytes; ``'infer'`` (dask's default), ``'adaptive'`` when the
    first file's row groups add up to more than twice ``blocksize``, else False.
    A partition never spans files.
    """
    if split_row_groups == "infer":
        first = footers[0][1] if footers else None
        total = (
            sum(first.row_group(i).total_byte_size for i in range(first.num_row_groups))
            if first
            else 0
        )
        split_row_groups = "adaptive" if blocksize and total > 2 * blocksize else False
    if split_row_groups == "adaptive":
        split_row_groups = "adaptive" if blocksize else False
    parts: list[list[tuple[str, list[int] | None]]] = []
    for url, md in footers:
        n = md.num_row_groups
        if split_row_groups is False or n == 0:
            parts.append([(url, None)])
        elif split_row_groups == "adaptive":
            assert blocksize
            group: list[int] = []
            size = 0
            for i in range(n):
                rg_size = md.row_group(i).total_byte_size
                if group and size + rg_size > blocksize:
                    parts.append([(url, group)])
                    group, size = [], 0
                group.append(i)
                size += rg_size
            parts.append([(url, group)])
        else:
            step = 1 if split_row_groups is True else int(split_row_groups)
            if step < 1:
                raise ValueError(f"split_row_groups must be at least 1, got {split_row_groups}")
            for i in range(0, n, step):
                parts.append([(url, list(range(i, min(i + step, n))))])
    return parts


def _filter_columns(filters: Any) -> list[str]:
    """The column names a DNF filter (a list of tuples, or of lists of tuples) names."""
    out: list[str] = []
    stack = list(filters)
    while stack:
        item = stack.pop(0)
        if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str):
            out.append(item[0])
        elif isinstance(item, list | tuple):
            stack[:0] = list(item)
        else:
            raise ValueError(f"filters: {item!r} is not a (column, op, value) tuple")
    return out


def _check_filters(filters: Any, names: list[str]) -> None:
    import pyarrow.parquet as pq

    if not isinstance(filters, list) or not filters:
        raise ValueError(
            f"filters must be a non-empty list of (column, op, value) tuples "
            f"(or a list of such lists), got {filters!r}"
        )
    missing = [c for c in _filter_columns(filters) if c not in names]
    if missing:
        raise ColumnNotFoundError(
            f"filters name columns that are not in the data: {', '.join(map(repr, missing))}; "
            f"it has {', '.join(names)}"
        )
    try:
        pq.filters_to_expression(filters)
    except (TypeError, ValueError, NotImplementedError) as e:
        raise ValueError(f"filters {filters!r}: {e}") from None


def dask_plan(schema: Any, index: Any, dtype_backend: str | None) -> tuple[Any, Any, dict]:
    """``(meta, index, common_kwargs)`` as ``dd.read_parquet`` makes them for files of ``schema``.

    Dask decides what becomes the index and how columns convert (pandas
    metadata, ``__index_level_0__``, string dtypes...) from a file's schema
    alone, so it is asked about an empty local file of the same schema; our
    partitions are then read with what it answered, as its own would be.
    """
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="kotta-meta-") as tmp:
        path = os.path.join(tmp, "empty.parquet")
        pq.write_table(schema.empty_table(), path)
        probe = dd.read_parquet(path, index=index, dtype_backend=dtype_backend)
        wrapper = next(iter(dict(probe.__dask_graph__()).values())).func
    if not all(hasattr(wrapper, a) for a in ("meta", "index", "common_kwargs")):
        raise RuntimeError(
            f"dask {dask.__version__}'s read_parquet is not the one this reader knows"
        )
    return wrapper.meta, wrapper.index, dict(wrapper.common_kwargs)


def read_parquet(
    path: str | Sequence[str],
    columns: str | list[str] | None = None,
    filters: list | None = None,
    index: str | list[str] | bool | None = None,
    split_row_groups: bool | int | str = "infer",
    blocksize: int | str | None = "default",
    storage_options: dict[str, Any] | None = None,
    dtype_backend: str | None = None,
    **kwargs: Any,
) -> dd.DataFrame:
    """Parquet objects as a Dask DataFrame, like ``dd.read_parquet``, staged on the worker.

    ``path``: an ``s3://bucket/key.parquet``, a glob (``*.parquet``), a prefix
    (``s3://bucket/dir/``: its ``.parquet``/``.parq``/``.pq`` objects whose
    names do not start with ``_`` or ``.``), or a list of them. The client
    reads each file's footer only. ``columns``, ``filters`` (pyarrow's DNF:
    ``[('x', '>', 3)]``, applied to rows), ``index``, ``split_row_groups``,
    ``blocksize`` (default 256 MiB) and ``dtype_backend`` mean what they mean to
    ``dd.read_parquet``. A column that is not in the data, in ``columns`` or
    ``filters``, raises :class:`ColumnNotFoundError` (a ``KeyError``), a
    malformed filter ``ValueError``, a path matching nothing
    ``NoFilesError`` (a ``FileNotFoundError``): all before any job.
    ``storage_options`` affect the client's reads only; on Kotta the server
    presigns each object for the worker (README, "What inputs may name").
    Hive-partitioned directories and ``_metadata`` files are not read.
    """
    if kwargs:
        raise TypeError(
            f"dask_kotta.dataframe.read_parquet does not support {', '.join(sorted(kwargs))}"
        )
    reader = RangeReader(storage_options)
    objects = _parquet_objects(path, storage_options, reader)
    with ThreadPoolExecutor(min(FOOTER_THREADS, len(objects))) as pool:
        metas = list(pool.map(lambda o: read_footer(reader, o[0], o[1]), objects))
    footers = [(url, md) for (url, _), md in zip(objects, metas, strict=True)]
    schema = metas[0].schema.to_arrow_schema()
    names = list(schema.names)

    as_series = isinstance(columns, str)
    wanted = [columns] if isinstance(columns, str) else None if columns is None else list(columns)
    named_index = [] if index in (None, False) else [index] if isinstance(index, str) else index
    missing = [c for c in [*named_index, *(wanted or [])] if c not in names]
    if missing:
        raise ColumnNotFoundError(
            f"columns not in the data: {', '.join(map(repr, missing))}; it has {', '.join(names)}"
        )
    if filters is not None:
        _check_filters(filters, names)

    if blocksize == "default":
        blocksize = "256 MiB"
    size = parse_bytes(blocksize) if isinstance(blocksize, str) else blocksize
    parts = plan_parquet(footers, split_row_groups, size)

    meta, index_arg, common = dask_plan(schema, index, dtype_backend)
    common["filters"] = filters
    df = dd.from_map(
        ReadParquet(meta, index_arg, common),
        [ParquetPart(p) for p in parts],
        meta=meta,
        label="read-parquet-kotta",
        enforce_metadata=False,
    )
    if wanted is not None:
        df = df[wanted[0]] if as_series else df[wanted]
    return df


def _parquet_objects(
    path: str | Sequence[str], storage_options: dict[str, Any] | None, reader: RangeReader
) -> list[tuple[str, int | None]]:
    paths = [path] if isinstance(path, str) else list(path)
    out: list[tuple[str, int | None]] = []
    for p in paths:
        key = urlparse(p).path
        is_dir = key.endswith("/") or "*" not in key and not key.endswith(PARQUET_SUFFIXES)
        if is_dir:
            # A directory, as dd.read_parquet takes one: its Parquet objects, not its _metadata.
            prefix = p if p.endswith("/") else p + "/"
            try:
                found = list_objects(prefix, storage_options, client=_s3(prefix, reader))
            except NoFilesError:
                found = []
            found = [
                (u, s)
                for u, s in found
                if u.endswith(PARQUET_SUFFIXES) and not os.path.basename(u).startswith(("_", "."))
            ]
            if not found and not key.endswith("/"):
                # a key without a Parquet suffix
                found = list_objects(p, storage_options, client=_s3(p, reader))
            if not found:
                raise NoFilesError(f"{p} resolved to no Parquet files")
            out.extend(found)
        else:
            out.extend(list_objects(p, storage_options, client=_s3(p, reader)))
    return out


def _s3(url: str, reader: RangeReader) -> Any:
    # One client for the listing and the ranged reads: making one costs ~0.3 s of CPU.
    return reader.client() if url.startswith("s3://") else None


# -- CSV: planning by byte ranges ----------------------------------------------------------------


def _auto_blocksize() -> int:
    from dask.dataframe.io.csv import AUTO_BLOCKSIZE

    return int(AUTO_BLOCKSIZE)


def _dask_path(url: str) -> str:
    # What dask's include_path_column holds: fsspec's path, without the s3:// protocol.
    return url[len("s3://") :] if url.startswith("s3://") else url


def _read_pandas(
    reader_name: str,
    urlpath: str | Sequence[str],
    blocksize: int | str | None = "default",
    lineterminator: str | None = None,
    compression: str | None = "infer",
    sample: int | bool = 256000,
    sample_rows: int = 10,
    enforce: bool = False,
    assume_missing: bool = False,
    storage_options: dict[str, Any] | None = None,
    include_path_column: bool | str = False,
    **kwargs: Any,
) -> dd.DataFrame:
    # dask.dataframe.io.csv.read_pandas, step for step, on listed objects and a ranged sample.
    from dask.dataframe.io.csv import clear_known_categories
    from pandas.api.types import CategoricalDtype, is_integer_dtype

    reader = getattr(pd, reader_name)
    if lineterminator is not None and len(lineterminator) == 1:
        kwargs["lineterminator"] = lineterminator
    else:
        lineterminator = "\n"
    if "encoding" in kwargs:
        b_lineterminator = lineterminator.encode(kwargs["encoding"])
        empty_blob = "".encode(kwargs["encoding"])
        if empty_blob:
            b_lineterminator = b_lineterminator[len(empty_blob) :]
    else:
        b_lineterminator = lineterminator.encode()
    if include_path_column and isinstance(include_path_column, bool):
        include_path_column = "path"
    if "index" in kwargs or ("index_col" in kwargs and kwargs.get("index_col") is not False):
        raise ValueError(
            "Keywords 'index' and 'index_col' not supported, except for 'index_col=False'. "
            f"Use {reader_name}(...).set_index('my-index') instead"
        )
    for kw in ["iterator", "chunksize"]:
        if kw in kwargs:
            raise ValueError(f"{kw} not supported for {reader_name}")
    if kwargs.get("nrows"):
        raise ValueError(f"nrows is not supported by {reader_name}; use {reader_name}(...).head(n)")
    if isinstance(kwargs.get("skiprows"), int):
        lastskiprow = firstrow = kwargs["skiprows"]
    elif kwargs.get("skiprows") is None:
        lastskiprow = firstrow = 0
    else:
        skiprows = set(kwargs["skiprows"])
        lastskiprow = max(skiprows)
        firstrow = min(set(range(len(skiprows) + 1)) - skiprows)
    if isinstance(kwargs.get("header"), list):
        raise TypeError(f"List of header rows not supported for {reader_name}")
    converters = kwargs.get("converters")
    path_converter = (
        converters.get(include_path_column)
        if isinstance(converters, dict) and include_path_column
        else None
    )

    rr = RangeReader(storage_options)
    paths = [urlpath] if isinstance(urlpath, str) else list(urlpath)
    s3 = rr.client() if any(str(p).startswith("s3://") for p in paths) else None
    objects = list_objects(urlpath, storage_options, sizes=True, client=s3)
    comp = infer_compression(objects[0][0], compression)
    if blocksize == "default":
        blocksize = _auto_blocksize()
    if isinstance(blocksize, str):
        blocksize = parse_bytes(blocksize)
    if blocksize and comp:
        warnings.warn(
            f"Warning {comp} compression does not support breaking apart files\n"
            "Please ensure that each individual file can fit in memory and\n"
            "use the keyword ``blocksize=None to remove this message``\n"
            "Setting ``blocksize=None``",
            stacklevel=3,
        )
        blocksize = None
    if blocksize and sample and blocksize < sample and lastskiprow != 0:
        warnings.warn(
            "Unexpected behavior can result from passing skiprows when\n"
            "blocksize is smaller than sample size.\n"
            "Setting ``sample=blocksize``",
            stacklevel=3,
        )
        sample = blocksize
    blocks = plan_blocks(objects, blocksize, b_lineterminator, comp)
    if not any(blocks):
        raise ValueError(f"{urlpath}: every object it names is empty")

    first_url = objects[0][0]
    if sample:
        b_sample = rr.sample(first_url, int(sample), b_lineterminator, comp)
    else:
        first = next(b for bs in blocks for b in bs)
        b_sample = rr.sample(first.url, first.length or 1 << 20, b_lineterminator, comp)

    names = kwargs.get("names")
    header = kwargs.get("header", "infer" if names is None else None)
    kwargs["header"] = header
    need = 1 if header is None else 2
    if isinstance(header, int):
        firstrow += header
    if kwargs.get("comment"):
        parts: list[bytes] = []
        for part in b_sample.split(b_lineterminator):
            split_comment = part.decode().split(kwargs["comment"])
            if len(split_comment) > 1:
                if len(split_comment[0]) > 0:
                    parts.append(split_comment[0].strip().encode())
            else:
                parts.append(part)
            if len(parts) > need:
                break
    else:
        parts = b_sample.split(b_lineterminator, max(lastskiprow + need, firstrow + need))
    nparts = 0 if not parts else len(parts) - int(not parts[-1])
    if sample is not False and nparts < lastskiprow + need and len(b_sample) >= sample:
        raise ValueError(
            "Sample is not large enough to include at least one row of data. "
            f"Please increase the number of bytes in `sample` in the call to `{reader_name}`"
        )
    b_header = b"" if header is None else parts[firstrow] + b_lineterminator

    head_kwargs = kwargs.copy()
    head_kwargs.pop("skipfooter", None)
    if head_kwargs.get("engine") == "pyarrow":
        head_kwargs["engine"] = "c"
    try:
        head = reader(BytesIO(b_sample), nrows=sample_rows, **head_kwargs)
    except pd.errors.ParserError as e:
        if "EOF" in str(e):
            raise ValueError(
                "EOF encountered while reading header. \n"
                "Pass argument `sample_rows` and make sure the value of `sample` "
                "is large enough to accommodate that many rows of data"
            ) from e
        raise
    if include_path_column and include_path_column in head.columns:
        raise ValueError(
            f"Files already contain the column name: {include_path_column}, so the path column "
            "cannot use this name. Please set `include_path_column` to a unique name."
        )
    specified_dtypes = kwargs.get("dtype", {}) or {}
    if assume_missing and isinstance(specified_dtypes, dict):
        for c in head.columns:
            if is_integer_dtype(head[c].dtype) and c not in specified_dtypes:
                head[c] = head[c].astype(float)

    # dask.dataframe.io.csv.text_blocks_to_pandas, with parts that carry their URLs.
    dtypes = head.dtypes.to_dict()
    categoricals = head.select_dtypes(include=["category"]).columns
    if isinstance(specified_dtypes, dict):
        known = [
            k
            for k in categoricals
            if isinstance(specified_dtypes.get(k), CategoricalDtype)
            and specified_dtypes[k].categories is not None
        ]
        unknown_categoricals = categoricals.difference(known)
    else:
        unknown_categoricals = categoricals
    for k in unknown_categoricals:
        dtypes[k] = "category"
    columns = list(head.columns)

    flat: list[CsvPart] = []
    colname = None
    for file_blocks in blocks:
        for i, b in enumerate(file_blocks):
            path = None
            if include_path_column:
                path = _dask_path(b.url)
                path = path_converter(path) if path_converter else path
            flat.append(CsvPart(b, i == 0, i == len(file_blocks) - 1, path))
    if include_path_column:
        colname = include_path_column
        paths = {p.path for p in flat}
        head = head.assign(**{colname: pd.Categorical.from_codes([0] * len(head), sorted(paths))})
    if len(unknown_categoricals):
        head = clear_known_categories(head, cols=unknown_categoricals)

    func = ReadCsv(
        reader_name,
        full_columns=columns,
        colname=colname,
        head=head,
        header=b_header,
        dtypes=dtypes,
        enforce=enforce,
        kwargs=kwargs,
        blocksize=blocksize,
    )
    return dd.from_map(func, flat, meta=head, label=f"{reader_name.replace('_', '-')}-kotta",
                       enforce_metadata=False)  # fmt: skip


def read_csv(
    urlpath: str | Sequence[str],
    blocksize: int | str | None = "default",
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dd.DataFrame:
    """CSV objects as a Dask DataFrame, like ``dd.read_csv``, staged on the worker.

    ``urlpath``: an ``s3://`` key, glob or list (``http(s)://`` URLs too, with
    ``blocksize=None``). A partition is a byte range of about ``blocksize``
    bytes of one object (dask's default, at most 64 MB), moved to line
    boundaries as Dask moves it, or the whole object with ``blocksize=None``
    (and always for compressed objects). Dtypes come from a sample of the
    first object (``sample=256000`` bytes, read by the client with one ranged
    GET); the other keywords (``sample_rows``, ``enforce``, ``assume_missing``,
    ``include_path_column``, ``compression``, ``lineterminator`` and pandas'
    own) mean what they mean to ``dd.read_csv``. ``storage_options`` affect
    the client's reads only.
    """
    return _read_pandas("read_csv", urlpath, blocksize, storage_options=storage_options, **kwargs)


def read_table(
    urlpath: str | Sequence[str],
    blocksize: int | str | None = "default",
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dd.DataFrame:
    """As :func:`read_csv`, parsed with ``pandas.read_table`` (tab-separated by default)."""
    return _read_pandas("read_table", urlpath, blocksize, storage_options=storage_options, **kwargs)


# -- Parquet: writing through the jobs' destinations ---------------------------------------------

#: The column Dask names an unnamed index after when it writes it.
NONE_LABEL = "__null_dask_index__"


def destination_file(url: str, filename: str) -> str:
    """The file in a job's directory that holds what goes to ``url`` (one per URL)."""
    return f"{OUTPUTS_DIR}/{hashlib.sha256(url.encode()).hexdigest()[:16]}/{filename}"


def parquet_destinations(
    path: str, npartitions: int, name_function: Any = None
) -> list[tuple[str, str]]:
    """``(filename, url)`` of each partition's file under the ``s3://bucket/prefix`` ``path``.

    Names are Dask's (``part.N.parquet``) or ``name_function(N)``'s, each a plain file
    name, all distinct; ``ValueError`` otherwise, or for a path that is not ``s3://``.
    """
    path = os.fspath(path) if hasattr(path, "__fspath__") else path
    if not isinstance(path, str) or not path.startswith("s3://"):
        raise ValueError(
            f"dask_kotta.dataframe.to_parquet writes to s3://bucket/prefix/ only, got {path!r}"
            " (a job's own directory is all a job can write to; its files reach a bucket"
            " through the runner)"
        )
    base = path.rstrip("/")
    if base == "s3:/" or not urlparse(base).netloc:
        raise ValueError(f"to_parquet: {path!r} names no bucket")
    if name_function is not None and not callable(name_function):
        raise ValueError("``name_function`` must be a callable with one argument.")
    out = []
    for i in range(npartitions):
        filename = f"part.{i}.parquet" if name_function is None else name_function(i)
        if not isinstance(filename, str) or not filename or "/" in filename or filename in (
            ".", "..",
        ):  # fmt: skip
            raise ValueError(
                f"name_function({i}) gave {filename!r}: each name must be a file name, without '/'"
            )
        url = f"{base}/{filename}"
        destination_parts(url)  # ValueError naming the URL
        out.append((filename, url))
    if len({u for _, u in out}) < len(out):
        raise ValueError("``name_function`` must produce unique filenames.")
    return out


def to_parquet(
    df: dd.DataFrame,
    path: str,
    compression: str | dict | None = "snappy",
    write_index: bool = True,
    append: bool = False,
    overwrite: bool = False,
    ignore_divisions: bool = False,
    partition_on: str | list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    custom_metadata: dict | None = None,
    write_metadata_file: bool | None = None,
    compute: bool = True,
    compute_kwargs: dict[str, Any] | None = None,
    schema: Any = "infer",
    name_function: Any = None,
    filesystem: Any = None,
    engine: str | None = None,
    **kwargs: Any,
) -> Any:
    """Write a Dask DataFrame to ``s3://bucket/prefix/`` as Parquet, like ``dd.to_parquet``.

    One file per partition, ``s3://bucket/prefix/part.N.parquet`` (or
    ``name_function(N)``), each written by Dask's own writer in the job that
    computes the partition, into the job's working directory; on
    ``KottaScheduler`` the runner then PUTs it to its place once the job
    succeeded, with a URL the server presigned for that key alone. The
    operator's policy must grant you writing there (``"s3_write_grants":
    {"you": ["s3://bucket/prefix/"]}``; a read grant is not enough): the
    scheduler asks the server before it submits any job and raises
    ``ForbiddenError`` naming the place and the missing grant. Only the
    partitions' files are written; nothing else in the bucket is read, listed
    or deleted. Under another scheduler each task uploads its file itself
    with boto3's standard chain (the running process's credentials).

    ``compression``, ``write_index``, ``custom_metadata``, ``schema``,
    ``name_function`` and the extra keywords (pyarrow's ``write_table``:
    ``row_group_size``...) mean what they mean to ``dd.to_parquet``, and the
    files are the ones it writes. ``compute=True`` (the default) computes with
    ``compute_kwargs`` (e.g. ``{"scheduler": sched}``) and returns None;
    ``compute=False`` returns a ``dask.delayed`` object whose compute writes
    (and gives None).

    Not supported (``NotImplementedError`` before anything runs): ``append``,
    ``overwrite``, ``partition_on``, ``write_metadata_file=True`` (no
    ``_metadata``/``_common_metadata`` file is written), ``filesystem``,
    ``storage_options`` and engines other than pyarrow.
    """
    from dask.dataframe.io.parquet.arrow import ArrowDatasetEngine
    from fsspec.implementations.local import LocalFileSystem

    unsupported = {
        "append": append,
        "overwrite": overwrite,
        "partition_on": partition_on,
        "write_metadata_file": write_metadata_file,
        "filesystem": filesystem,
        "storage_options": storage_options,
    }
    asked = [k for k, v in unsupported.items() if v]
    if engine not in (None, "pyarrow", "auto"):
        asked.append(f"engine={engine!r}")
    if asked:
        raise NotImplementedError(
            f"dask_kotta.dataframe.to_parquet does not support {', '.join(asked)}: it writes "
            "one new file per partition through each job's destinations (the runner's "
            "presigned PUT of that one key), and touches nothing else in the bucket"
        )
    del ignore_divisions  # only meaningful with append
    if df.columns.inferred_type not in {"string", "empty"}:
        raise ValueError("parquet doesn't support non-string column names")
    places = parquet_destinations(path, df.npartitions, name_function)

    # dask.dataframe.dask_expr.io.parquet.to_parquet, step for step (without append).
    division_info = {"divisions": df.divisions, "name": df.index.name}
    if division_info["name"] is None:
        if NONE_LABEL not in df.columns:
            division_info["name"] = NONE_LABEL
        elif write_index:
            raise ValueError("Index must have a name if __null_dask_index__ is a column.")
        else:
            warnings.warn(
                "If read back by Dask, column named __null_dask_index__ "
                "will be set to the index (and renamed to None).",
                stacklevel=2,
            )
    reserved_names = [name for name in ["index", "level_0"] if name not in df.columns]
    index_cols: list = []
    if write_index:
        real_cols = set(df.columns)
        none_index = list(df._meta.index.names) == [None]
        df = df.reset_index()
        if none_index:
            df = df.rename(columns={c: NONE_LABEL for c in df.columns if c in reserved_names})
        index_cols = [c for c in set(df.columns) - real_cols]
    else:
        df = df.reset_index(drop=True)
    if custom_metadata and b"pandas" in custom_metadata.keys():
        raise ValueError(
            "User-defined key/value metadata (custom_metadata) can not contain a b'pandas' key. "
            "This key is reserved by Pandas, and overwriting the corresponding value can render "
            "the entire dataset unreadable."
        )
    with tempfile.TemporaryDirectory(prefix="kotta-to-parquet-") as tmp:
        # It only makes the (local, empty) directory and infers the schema here.
        _, _, _, extra = ArrowDatasetEngine.initialize_write(
            df, LocalFileSystem(), tmp, append=False, partition_on=[], ignore_divisions=True,
            division_info=division_info, index_cols=index_cols, schema=schema,
            custom_metadata=custom_metadata, **kwargs,
        )  # fmt: skip
    write_kwargs = {**kwargs, "compression": compression, "custom_metadata": custom_metadata,
                    **extra}  # fmt: skip
    parts = df.to_delayed()
    writes = [
        dask.delayed(
            WriteParquet(url, destination_file(url, filename), filename,
                         dict(write_kwargs, head=True) if i == 0 else write_kwargs),
            pure=True,
        )(part)
        for i, (part, (filename, url)) in enumerate(zip(parts, places, strict=True))
    ]  # fmt: skip
    if compute:
        dask.compute(writes, **(compute_kwargs or {}))
        return None
    return dask.delayed(_written, pure=True)(writes)


def _written(parts: list) -> None:
    """What a computed ``to_parquet`` gives: None, once every partition is written."""
    return None
