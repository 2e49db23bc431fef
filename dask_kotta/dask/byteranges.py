"""Byte ranges of objects, planned on the client: ``read_bytes`` and what ``read_csv`` builds on.

>>> import dask_kotta.bag as kb
>>> sample, blocks = kb.read_bytes('s3://bucket/logs/*.csv', delimiter=b'\\n', blocksize='64 MiB')

As ``dask.bytes.read_bytes``: each object is cut into blocks of about
``blocksize`` bytes (the same cuts, so the same partitions), moved to
``delimiter`` boundaries when the block is read. The client lists keys and
sizes and reads the ``sample`` only (one ranged GET); each block's task
carries its URL in ``__kotta_inputs__``, so on Kotta the runner stages the
object into the job and the task reads its range there
(:mod:`dask_kotta.dask.staged_frames`). A job that runs several blocks of one
object stages it once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import dask
from dask.base import tokenize
from dask.utils import parse_bytes

from ..s3client import s3_client
from .bag import list_objects
from .staged import COMPRESSION_BY_SUFFIX, OPENERS
from .staged_frames import Block, ReadBlock


def block_offsets(
    size: int, blocksize: int | None, not_zero: bool = False
) -> list[tuple[int, int | None]]:
    """``(offset, length)`` of each block of an object of ``size`` bytes, as dask cuts it.

    ``blocksize`` None: one block, the whole object. An empty object has no
    blocks. Spare bytes are spread over the blocks, so there are
    ``size // blocksize`` of them (at least one).
    """
    if blocksize is None:
        return [(0, None)]
    if blocksize < 1:
        raise ValueError(f"blocksize must be at least 1 byte, got {blocksize}")
    if size == 0:
        return []
    # dask.bytes.read_bytes' arithmetic, float steps included, so block edges agree.
    step: float = size / (size // blocksize) if size % blocksize and size > blocksize else blocksize
    place: float = 0
    off = [0]
    length: list[int] = []
    while size - place > (step * 2) - 1:
        place += step
        off.append(int(place))
        length.append(off[-1] - off[-2])
    length.append(size - off[-1])
    if not_zero:
        off[0] = 1
        length[0] -= 1
    return list(zip(off, length, strict=True))


def infer_compression(url: str, compression: str | None) -> str | None:
    """The compression of ``url``: ``compression``, or its suffix's when ``'infer'``."""
    if compression == "infer":
        path = urlparse(url).path
        return COMPRESSION_BY_SUFFIX.get(path[path.rfind(".") :] if "." in path else "")
    if compression is not None and compression not in OPENERS:
        raise ValueError(
            f"compression {compression!r} is not one of None, 'infer', {', '.join(OPENERS)}"
        )
    return compression


class RangeReader:
    """Ranged reads of objects for the client: footers and samples, never whole objects.

    Counts what it reads (``bytes_read``), so a caller can say how much passed
    through the client.
    """

    def __init__(self, storage_options: dict[str, Any] | None = None):
        self.storage_options = storage_options
        self._s3: Any = None
        self._lock = threading.Lock()
        self.bytes_read = 0

    def client(self) -> Any:
        """The boto3 S3 client these reads use (made once): listings can share it."""
        return self._client()

    def _client(self) -> Any:
        # One client for every thread reading footers: making one costs ~0.3 s of CPU.
        with self._lock:
            if self._s3 is None:
                self._s3 = s3_client(self.storage_options)
            return self._s3

    def read(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``url`` (fewer at its end); ``start`` < 0 counts from the end."""
        rng = f"bytes={start}" if start < 0 else f"bytes={start}-{end - 1}"  # -N: the last N
        p = urlparse(url)
        if p.scheme == "s3":
            from botocore.exceptions import ClientError

            try:
                body = self._client().get_object(Bucket=p.netloc, Key=p.path.lstrip("/"), Range=rng)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # past the end
                raise
            data = body["Body"].read()
        else:
            import requests

            r = requests.get(url, headers={"Range": rng}, timeout=(10, 60))
            if r.status_code == 416:
                return b""
            r.raise_for_status()
            data = r.content
        with self._lock:
            self.bytes_read += len(data)
        return data

    def open_stream(self, url: str) -> Any:
        """A file-like stream of the whole object, read only as far as the caller reads."""
        p = urlparse(url)
        if p.scheme == "s3":
            return self._client().get_object(Bucket=p.netloc, Key=p.path.lstrip("/"))["Body"]
        import requests

        r = requests.get(url, stream=True, timeout=(10, 60))
        r.raise_for_status()
        r.raw.decode_content = True
        return r.raw

    def sample(
        self, url: str, nbytes: int, delimiter: bytes | None, compression: str | None
    ) -> bytes:
        """The first ``nbytes`` of an object, and on to the next delimiter, as dask samples."""
        if compression:
            # A compressed sample is read from the start of a stream, never the whole object.
            stream = self.open_stream(url)
            counted = _Counting(stream, self)
            with OPENERS[compression](counted, "rb") as f:
                return _sample_from(f.read, nbytes, delimiter)
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            data = self.read(url, pos, pos + n) if n > 0 else b""
            pos += len(data)
            return data

        return _sample_from(read, nbytes, delimiter)


class _Counting:
    """A stream that adds what is read through it to a :class:`RangeReader`'s count."""

    def __init__(self, raw: Any, reader: RangeReader):
        self.raw, self.reader = raw, reader

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n) if n is not None and n >= 0 else self.raw.read()
        self.reader.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


def _sample_from(read: Any, nbytes: int, delimiter: bytes | None) -> bytes:
    buf = read(nbytes)
    if delimiter is None:
        return buf
    while True:
        new = read(nbytes)
        if not new:
            return buf
        if delimiter in new:
            return buf + new.split(delimiter, 1)[0] + delimiter
        buf += new


def plan_blocks(
    objects: list[tuple[str, int | None]],
    blocksize: int | None,
    delimiter: bytes | None,
    compression: str | None,
    not_zero: bool = False,
) -> list[list[Block]]:
    """Each object's blocks (an empty list for an empty object), as ``read_bytes`` cuts them."""
    out = []
    for url, size in objects:
        comp = infer_compression(url, compression)
        if blocksize is not None:
            if comp is not None:
                raise ValueError(
                    f"{url}: cannot read byte ranges of a compressed ({comp}) object; "
                    "pass blocksize=None"
                )
            if size is None:
                raise ValueError(
                    f"{url}: its size is unknown, so it cannot be cut; pass blocksize=None"
                )
        ranges = block_offsets(size or 0, blocksize, not_zero)
        out.append([Block(url, o, n, delimiter, comp) for o, n in ranges])
    return out


def read_bytes(
    urlpath: str | Sequence[str],
    delimiter: bytes | None = None,
    not_zero: bool = False,
    blocksize: int | str | None = "128 MiB",
    sample: int | str | bool = "10 kiB",
    compression: str | None = None,
    include_path: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> tuple:
    """Blocks of objects as ``Delayed`` bytes, like ``dask.bytes.read_bytes``, staged on the worker.

    Returns ``(sample, blocks)``, or ``(sample, blocks, urls)`` with
    ``include_path``: ``blocks`` holds one list of ``Delayed`` per object, each
    the bytes of a block of about ``blocksize`` bytes (None: the whole object),
    starting after and ending at a ``delimiter`` if one is given. ``sample``
    is the first bytes of the first object (``False``: none), read by the
    client with one ranged GET. ``compression`` (None, ``'infer'``, ``gzip``,
    ``bz2``, ``xz``) needs ``blocksize=None``. ``storage_options`` affect the
    client's listing and sample only: on Kotta the server presigns each object
    for the worker (README, "What inputs may name").
    """
    objects = list_objects(urlpath, storage_options, sizes=blocksize is not None)
    if isinstance(blocksize, str):
        blocksize = parse_bytes(blocksize)
    if blocksize is not None:
        blocksize = int(blocksize)
    blocks = plan_blocks(objects, blocksize, delimiter, compression, not_zero)
    out = []
    for (url, _), file_blocks in zip(objects, blocks, strict=True):
        token = tokenize(url, delimiter, compression, [(b.offset, b.length) for b in file_blocks])
        out.append(
            [
                dask.delayed(ReadBlock(b), pure=True)(
                    dask_key_name=f"read-block-kotta-{b.offset}-{token}"
                )
                for b in file_blocks
            ]
        )
    sample_bytes: bytes | bool = False
    if sample:
        n = parse_bytes("10 kiB") if sample is True else sample
        n = parse_bytes(n) if isinstance(n, str) else int(n)
        url = objects[0][0]
        sample_bytes = RangeReader(storage_options).sample(
            url, n, delimiter, infer_compression(url, compression)
        )
    if include_path:
        return sample_bytes, out, [url for url, _ in objects]
    return sample_bytes, out
