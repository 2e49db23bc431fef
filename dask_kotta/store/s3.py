"""The object store in an S3 bucket, through boto3, on any endpoint (AWS, SeaweedFS, MinIO).

``dask-kotta up --store s3://BUCKET/PREFIX`` (or ``DASK_KOTTA_STORE``). The
endpoint and credentials come from boto3's own chain: ``AWS_ENDPOINT_URL_S3``
/ ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance roles. Keys are ``PREFIX/u<user>/<job>/<file>``, the
same layout as the local store under its directory.

Workers never get the server's credentials for this bucket: the server hands
them presigned URLs, one per object they need (inputs to read, outputs to
write, with a multipart upload for large outputs), signed by
:mod:`dask_kotta.store.presign`.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote, urlparse

from ..errors import ConfigError, NotFoundError, UnsafePathError
from ..paths import safe_relpath
from ..s3client import s3_client
from .presign import presigner

# boto3 and botocore are imported inside the functions that use them: they take ~0.2 s to
# import, and a service on a local store (or a worker) never needs them.

#: Objects up to this size are written with one presigned PUT; larger ones in parts.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
#: Smallest part of a multipart upload (S3's minimum is 5 MiB).
PART_SIZE = 8 * 1024 * 1024
#: S3 allows at most this many parts per upload.
MAX_PARTS = 10_000
#: Lifetime of presigned download URLs handed to users and runners, in seconds.
GET_EXPIRES_S = 6 * 3600
#: Lifetime of presigned upload URLs: long enough for a slow multi-GB upload.
PUT_EXPIRES_S = 6 * 3600


def content_disposition(filename: str) -> str:
    """``attachment`` under ``filename``, for any name: an ASCII fallback and RFC 6266's
    UTF-8 form."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) or type(e).__name__


class S3ObjectStore:
    """Objects as keys under ``prefix`` in one S3 bucket."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None, create: bool = True):
        self.bucket = bucket
        self.prefix = safe_relpath(prefix, "store prefix") if prefix.strip("/") else ""
        self.client = client or s3_client()
        self.endpoint = self.client.meta.endpoint_url
        self._presigned: dict[str, tuple[str, float]] = {}
        self._presigned_lock = threading.Lock()
        self._check_bucket(create)
        self._check_writable()

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> S3ObjectStore:
        """The store named by ``s3://BUCKET`` or ``s3://BUCKET/PREFIX``."""
        p = urlparse(url)
        if p.scheme != "s3" or not p.netloc:
            raise ConfigError(f"store {url!r} is not of the form s3://BUCKET/PREFIX")
        if p.query or p.fragment:
            raise ConfigError(
                f"store {url!r}: no ?query or #fragment allowed in s3://BUCKET/PREFIX"
            )
        try:
            return cls(p.netloc, p.path.strip("/"), **kw)
        except UnsafePathError as e:
            raise ConfigError(f"store {url!r}: {e}") from None

    def __repr__(self) -> str:
        return f"<S3ObjectStore {self.describe()}>"

    # -- start-up -------------------------------------------------------------------------

    def _check_bucket(self, create: bool) -> None:
        """Make sure the bucket is there (creating it if allowed); every failure is a ConfigError."""
        import botocore.exceptions as bx

        where = f"s3://{self.bucket} at {self.endpoint}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except bx.ClientError as e:
            code = _error_code(e)
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"cannot use the store bucket {where}: {code} "
                    "(is it someone else's bucket, or do the credentials lack s3:ListBucket?)"
                ) from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as e:
            raise ConfigError(
                f"cannot reach the S3 endpoint {self.endpoint} for the store s3://{self.bucket}: {e}. "
                "Check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and that the S3 service is up."
            ) from None
        except bx.NoCredentialsError:
            raise ConfigError(
                f"no AWS credentials for the store {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except bx.BotoCoreError as e:
            raise ConfigError(f"cannot use the store bucket {where}: {e}") from None
        if not create:
            raise ConfigError(f"the store bucket {where} does not exist")
        try:
            region = self.client.meta.region_name
            kw: dict[str, Any] = {}
            if region and region != "us-east-1":
                kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self.client.create_bucket(Bucket=self.bucket, **kw)
        except bx.ClientError as e:
            code = _error_code(e)
            if code == "BucketAlreadyOwnedByYou":
                return
            message = e.response.get("Error", {}).get("Message", "").rstrip(".")
            if code == "InvalidBucketName":
                raise ConfigError(
                    f"the store bucket {where} does not exist and cannot be created: "
                    f"{self.bucket!r} is not a valid bucket name ({code}: {message})"
                ) from None
            raise ConfigError(
                f"the store bucket {where} does not exist and creating it was refused: "
                f"{code}: {message}. Create it yourself or grant s3:CreateBucket."
            ) from None
        except bx.BotoCoreError as e:
            raise ConfigError(f"cannot create the store bucket {where}: {e}") from None

    def _check_writable(self) -> None:
        """Write a marker object: a store we cannot write to should fail at start, not per job.

        A fresh bucket's first write can fail for a few seconds on some servers
        (SeaweedFS grows volumes then), so this tries for a while.
        """
        import botocore.exceptions as bx

        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(".kotta/store.json"),
                    Body=b'{"dask-kotta": 1}',
                )
                return
            except bx.ClientError as e:
                code = _error_code(e)
                if code in ("InternalError", "ServiceUnavailable", "SlowDown", "503", "500"):
                    if time.monotonic() < deadline:
                        time.sleep(0.5)
                        continue
                raise ConfigError(
                    f"cannot write to the store s3://{self.bucket}/{self.prefix} at {self.endpoint}: "
                    f"{code}: {e.response.get('Error', {}).get('Message', '')}"
                ) from None
            except bx.BotoCoreError as e:
                raise ConfigError(
                    f"cannot write to the store s3://{self.bucket}/{self.prefix} at {self.endpoint}: {e}"
                ) from None

    # -- keys -----------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        rel = safe_relpath(key, "object key")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def key_for_url(self, url: str) -> str | None:
        """The store key an ``s3://`` URL names, if it points into this store; else None.

        Inside this bucket, keys with empty, ``.`` or ``..`` segments are refused
        outright: S3 servers differ on whether they normalise them, so such a key
        could reach another user's prefix.
        """
        p = urlparse(url)
        if p.scheme != "s3" or p.netloc.lower() != self.bucket.lower():
            return None
        key = p.path[1:] if p.path.startswith("/") else p.path
        if any(seg in ("", ".", "..") for seg in key.split("/")):
            raise UnsafePathError(
                f"input {url!r}: keys in the service's bucket may not contain empty, '.' or '..' parts"
            )
        if not self.prefix:
            return key
        if not key.startswith(self.prefix + "/"):
            return None
        return key[len(self.prefix) + 1 :]

    def store_url(self, key: str) -> str | None:
        """The ``s3://`` URL of an object."""
        return f"s3://{self.bucket}/{self._key(key)}"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} ({self.endpoint})"

    # -- reading and writing --------------------------------------------------------------

    def put_stream(self, key: str, stream: IO[bytes]) -> int:
        from boto3.s3.transfer import TransferConfig

        counted = _Counting(stream)
        self.client.upload_fileobj(
            counted,
            self.bucket,
            self._key(key),
            Config=TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=PART_SIZE
            ),
        )
        return counted.n

    def put_bytes(self, key: str, data: bytes) -> int:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return len(data)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def open_read(self, key: str) -> io.IOBase:
        import botocore.exceptions as bx

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except bx.ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404", "NotFound"):
                raise NotFoundError(f"no object {key!r}") from None
            raise
        return _Body(body)

    def size(self, key: str) -> int | None:
        import botocore.exceptions as bx

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except bx.ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def local_path(self, key: str) -> None:
        return None

    def presigned_get(self, key: str, expires_s: int = GET_EXPIRES_S) -> str:
        """A presigned GET URL; reused while it has at least half its life left.

        Job views list every output's URL on every poll, and presigning costs
        about 0.3 ms, so a job with a thousand outputs would otherwise spend a
        third of a second per look.
        """
        now = time.time()
        with self._presigned_lock:
            hit = self._presigned.get(key)
            if hit is not None and hit[1] - now > expires_s / 2:
                return hit[0]
        url = presigner(self.client).url("GET", self.bucket, self._key(key), expires_s)
        with self._presigned_lock:
            if len(self._presigned) > 200_000:
                self._presigned.clear()
            self._presigned[key] = (url, now + expires_s)
        return url

    def download_url(self, key: str, expires_s: int, filename: str) -> str:
        """A presigned GET of ``key`` for a person's browser: valid ``expires_s`` seconds (at
        least 1), saved as ``filename`` (``Content-Disposition``). Not cached: each is made
        for one download link as it is opened."""
        disposition = content_disposition(filename)
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key),
                    "ResponseContentDisposition": disposition,
                    "ResponseCacheControl": "no-store"},
            ExpiresIn=max(1, int(expires_s)),
        )  # fmt: skip

    # -- uploads by presigned URL ---------------------------------------------------------

    def upload_plan(self, key: str, size: int, expires_s: int = PUT_EXPIRES_S) -> dict[str, Any]:
        """How a runner or client should send ``size`` bytes to ``key``, without our credentials.

        ``{"mode": "put", "url"}`` for one presigned PUT, or ``{"mode":
        "multipart", "upload_id", "part_size", "urls"}``: PUT part *i* (of
        ``part_size`` bytes, the last one shorter) to ``urls[i]``, then have the
        server call :meth:`complete_upload` with the parts' ETags.

        Each URL signs its ``Content-Length`` (``size``, or the part's), so S3 itself
        refuses a body of another size: a plan for 10 bytes cannot store 300 MiB.
        """
        k = self._key(key)
        if size <= MULTIPART_THRESHOLD:
            url = presigner(self.client).url("PUT", self.bucket, k, expires_s, length=size)
            return {"mode": "put", "url": url}
        part = max(PART_SIZE, math.ceil(size / MAX_PARTS))
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=k)["UploadId"]
        urls = [
            self.client.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self.bucket,
                    "Key": k,
                    "UploadId": upload_id,
                    "PartNumber": i + 1,
                    "ContentLength": min(part, size - i * part),
                },
                ExpiresIn=expires_s,
            )
            for i in range(math.ceil(size / part))
        ]
        return {"mode": "multipart", "upload_id": upload_id, "part_size": part, "urls": urls}

    def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        """Finish a multipart upload begun by :meth:`upload_plan`."""
        parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )  # fmt: skip

    def abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort this store's multipart uploads begun over ``older_than_s`` ago (their parts
        cost storage until aborted, and a client that died never completes them)."""
        cutoff = time.time() - older_than_s
        n = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
        )
        for page in pages:
            for up in page.get("Uploads", []):
                if up["Initiated"].timestamp() < cutoff:
                    with contextlib.suppress(Exception):  # completed or aborted meanwhile
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        n += 1
        return n

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop the parts of an unfinished multipart upload."""
        self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), UploadId=upload_id
        )

    def listing(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """``(key, size, modified)`` of each object under ``prefix`` (a request per 1,000)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix) + "/"
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            for o in page.get("Contents", []):
                yield o["Key"][strip:], o["Size"], o["LastModified"].timestamp()

    def delete(self, key: str) -> None:
        """Delete one object (nothing happens if it is not there)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        with self._presigned_lock:
            self._presigned.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        full = self._key(prefix) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full
        )
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
        with self._presigned_lock:
            for k in [k for k in self._presigned if k.startswith(prefix.rstrip("/") + "/")]:
                del self._presigned[k]


class _Counting(io.RawIOBase):
    """Counts the bytes read from a stream (boto3 does not say how much it uploaded)."""

    def __init__(self, stream: IO[bytes]):
        self.stream, self.n = stream, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.n += len(data)
        return data


class _Body(io.RawIOBase):
    """A botocore streaming body as a closeable binary file."""

    def __init__(self, body: Any):
        self.body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.body.read(None if size is None or size < 0 else size)

    def readinto(self, b: Any) -> int:
        data = self.body.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.body.read()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body.iter_chunks(1024 * 1024))

    def close(self) -> None:
        self.body.close()
        super().close()
