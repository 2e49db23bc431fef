"""What a URL is called: the file it is staged under, and how it is shown without its secrets.

Every side agrees on these: the server names an input's file when it checks a
job (and refuses one with no name), the runner stages it under that name, a
Dask task reads it from there (:mod:`dask_kotta.dask.staged`), the Dask
scheduler keeps two inputs with one name apart, and ``KOut(url).file`` is the
same name, so a job can open ``KOut(url).file`` for an input it was given.

Standard library only and nothing mutable at module level: besides the
server, the runner and the client, it is pickled by value into Dask tasks
that run where dask-kotta is not installed (see ``dask/staged.py``).
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlparse, urlsplit


class NoFileNameError(ValueError):
    """A URL's path has no file name to stage it under: empty, ``.`` or ``..``."""


def staged_name(url: str) -> str:
    """The file name ``url`` is staged under: the last segment of its path, as written.

    The segment is not percent-decoded (``a%20b.csv`` stays so), and a
    trailing ``/`` is ignored (``s3://b/dir/`` is ``dir``). A URL whose path
    ends in nothing, ``.`` or ``..`` raises :class:`NoFileNameError`: staged,
    it would name the job's directory or its parent.
    """
    base = posixpath.basename(urlparse(url).path.rstrip("/"))
    if base in ("", ".", ".."):
        raise NoFileNameError(f"{shown_url(url)!r} names no file (its path has no base name)")
    return base


def has_userinfo(url: str) -> bool:
    """True if ``url`` carries ``user[:password]@`` before its host."""
    return "@" in urlsplit(url).netloc


def shown_url(url: str) -> str:
    """``url`` as it may appear in a reason, a log or an event: no user-info, no query, no fragment.

    A query can hold a presigned URL's signature, user-info a password.
    """
    try:
        p = urlsplit(url)
    except ValueError:
        return "(a malformed URL)"
    netloc = p.netloc.rpartition("@")[2]
    if not p.scheme:
        return url.split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    return f"{p.scheme}://{'***@' if '@' in p.netloc else ''}{netloc}{p.path}"


_QUERY = re.compile(r"\?[^\s'\")]+")


def scrub(error: object) -> str:
    """An error's text without URL queries: requests names the URL, query and signature included."""
    return _QUERY.sub("", str(error))
