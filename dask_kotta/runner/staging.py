"""Stage a job's inputs into its working directory, streamed to disk.

Each URL lands under its base name. ``http(s)://`` follows redirects with
timeouts; ``s3://`` goes through boto3 with its standard configuration chain.
A failure raises ``StagingError`` naming the URL.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import urlparse

import requests

from ..paths import resolve_inside

CHUNK = 1024 * 1024


class StagingError(Exception):
    """An input could not be fetched or an output could not be stored."""


def basename(url: str) -> str:
    return posixpath.basename(urlparse(url).path.rstrip("/"))


def fetch_http(url: str, dest: Path, session: requests.Session | None = None) -> int:
    s = session or requests
    try:
        with s.get(url, stream=True, timeout=(10, 300), allow_redirects=True) as r:
            if r.status_code >= 400:
                raise StagingError(f"input {url}: HTTP {r.status_code} {r.reason}")
            size = 0
            with open(dest, "wb") as f:
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    size += len(chunk)
            return size
    except requests.RequestException as e:
        raise StagingError(f"input {url}: {type(e).__name__}: {e}") from None


def fetch_s3(url: str, dest: Path) -> int:
    import boto3
    import botocore.exceptions

    p = urlparse(url)
    bucket, key = p.netloc, p.path.lstrip("/")
    try:
        s3 = boto3.client("s3")
        s3.download_file(bucket, key, str(dest))
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        raise StagingError(f"input {url}: S3 error {code}: {e}") from None
    except (botocore.exceptions.BotoCoreError, OSError) as e:
        raise StagingError(f"input {url}: {type(e).__name__}: {e}") from None
    return dest.stat().st_size


def stage_inputs(urls: list[str], workdir: Path) -> dict[str, int]:
    """Download every input into ``workdir``; returns sizes by file name."""
    sizes: dict[str, int] = {}
    with requests.Session() as session:
        for url in urls:
            dest = resolve_inside(workdir, basename(url), "input name")
            scheme = urlparse(url).scheme
            if scheme in ("http", "https"):
                sizes[dest.name] = fetch_http(url, dest, session)
            elif scheme == "s3":
                sizes[dest.name] = fetch_s3(url, dest)
            else:
                raise StagingError(f"input {url}: unsupported scheme {scheme!r}")
    return sizes
