"""Presigned S3 GET and PUT URLs, signed locally with SigV4.

The store hands workers one presigned URL per object instead of credentials;
botocore's presigning is slow enough to show up when a job has thousands of
objects, so :class:`Presigner` reproduces its signature itself once botocore
has shown what a bucket's URLs look like.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlparse


class Presigner:
    """Presigned GET and PUT URLs from a boto3 client, fast.

    botocore spends ~0.3 ms of CPU per URL (endpoint rules, event hooks): as
    much as fetching a small object over HTTP takes, and 0.3 s per thousand
    outputs. For each bucket and method, the first URL comes from botocore and
    fixes the URL's shape (scheme, host, path prefix: the addressing style);
    the SigV4 query signature is then computed here for that same URL and
    must equal botocore's byte for byte, or that bucket keeps using botocore.
    Keys with characters whose encoding could differ always use botocore.
    """

    _PLAIN_KEY = re.compile(r"^[A-Za-z0-9/._~-]+$")
    _OPS = {"GET": "get_object", "PUT": "put_object"}

    def __init__(self, client: Any):
        self.client = client
        self.region = client.meta.region_name or "us-east-1"
        self.shapes: dict[tuple[str, str], tuple[str, str] | None] = {}
        self.lock = threading.Lock()

    def _botocore(
        self, method: str, bucket: str, key: str, expires_s: int, length: int | None = None
    ) -> str:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if length is not None:
            params["ContentLength"] = length
        return self.client.generate_presigned_url(
            self._OPS[method], Params=params, ExpiresIn=expires_s
        )

    def _sign(
        self, method: str, origin: str, path: str, amz_date: str, expires_s: int, creds: Any,
        length: int | None = None,
    ) -> str:  # fmt: skip
        day = amz_date[:8]
        scope = f"{day}/{self.region}/s3/aws4_request"
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{creds.access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_s),
            "X-Amz-SignedHeaders": "host" if length is None else "content-length;host",
        }
        if creds.token:
            params["X-Amz-Security-Token"] = creds.token
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
        )
        host = urlparse(origin).netloc
        if length is None:
            headers, signed = f"host:{host}\n", "host"
        else:  # signed, so S3 refuses a body of any other size (SignatureDoesNotMatch)
            headers, signed = f"content-length:{length}\nhost:{host}\n", "content-length;host"
        canonical = f"{method}\n{path}\n{query}\n{headers}\n{signed}\nUNSIGNED-PAYLOAD"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"
        k = hmac.new(f"AWS4{creds.secret_key}".encode(), day.encode(), hashlib.sha256).digest()
        for part in (self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{origin}{path}?{query}&X-Amz-Signature={sig}"

    def url(
        self, method: str, bucket: str, key: str, expires_s: int, length: int | None = None
    ) -> str:
        """A presigned ``GET`` or ``PUT`` URL of ``s3://bucket/key``, valid ``expires_s`` seconds.

        With ``length``, the URL also signs a ``Content-Length`` of that many bytes: S3
        refuses a PUT of any other size (or a chunked one).
        """
        # Checked against botocore apart: a URL that signs its length has another signature.
        which = (bucket, method if length is None else f"{method}+length")
        with self.lock:
            known = which in self.shapes
            shape = self.shapes.get(which)
        if not self._PLAIN_KEY.match(key) or (known and shape is None):
            return self._botocore(method, bucket, key, expires_s, length)
        try:  # botocore's own (private) handle on the credentials, refreshed as they rotate
            creds = self.client._request_signer._credentials
            creds = creds.get_frozen_credentials() if creds is not None else None
        except AttributeError:  # a botocore that keeps them elsewhere: sign the slow way
            creds = None
        if creds is None:
            return self._botocore(method, bucket, key, expires_s, length)  # NoCredentialsError
        suffix = quote(key, safe="/~")
        if shape is not None:
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            return self._sign(
                method, shape[0], shape[1] + suffix, amz_date, expires_s, creds, length
            )
        url = self._botocore(method, bucket, key, expires_s, length)
        p = urlparse(url)
        q = parse_qs(p.query)
        ok = False
        if p.path.endswith(suffix) and q.get("X-Amz-Algorithm") == ["AWS4-HMAC-SHA256"]:
            origin = f"{p.scheme}://{p.netloc}"
            mine = self._sign(method, origin, p.path, q["X-Amz-Date"][0], expires_s, creds, length)
            ok = parse_qs(urlparse(mine).query) == q
        with self.lock:
            self.shapes[which] = (origin, p.path[: len(p.path) - len(suffix)]) if ok else None
        return url


_presigners: dict[int, Presigner] = {}
_presigners_lock = threading.Lock()


def presigner(client: Any) -> Presigner:
    """The :class:`Presigner` of a boto3 client (one per client)."""
    with _presigners_lock:
        p = _presigners.get(id(client))
        if p is None or p.client is not client:
            p = _presigners[id(client)] = Presigner(client)
        return p
