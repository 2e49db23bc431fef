"""Large literals of a Dask graph, stored once in the object store instead of in each payload.

A task's payload carries the data written into the graph: a chunk of
``da.from_array``, a DataFrame passed to ``delayed``, a ``bytes`` constant. A
literal used by twenty jobs would travel, and be stored, twenty times, and a
few large ones push a job over the server's ``--max-payload``. So a literal
whose size (``dask.sizeof``'s estimate, then its pickle) is over the
scheduler's ``literal_threshold`` is pickled once, uploaded with
``Kotta.upload_file`` under a name made of its SHA-256
(``kotta-literal-<hash>.pkl``), and each job that uses it lists that upload in
its ``inputs``: the runner stages it into the job's directory and
``remote._Literal`` unpickles it there, once per job.

Uploads are content-addressed and remembered per connection, so a second
compute of the same array (or another scheduler on the same ``Kotta``) uploads
nothing. They are kept, counting against the user's storage quota like any
upload, until :func:`delete_literals` runs for the connection, which happens
at interpreter exit for every connection still alive (best effort: a killed
process leaves them, as uploads, for ``konn.delete_upload``).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import cloudpickle
from dask.sizeof import sizeof
from dask.utils import parse_bytes

from ..errors import KottaError, ServerUnavailableError
from ..urls import staged_name
from .remote import LITERAL_PREFIX, _Literal

if TYPE_CHECKING:
    from ..client.connection import Kotta

#: Default size over which a literal is stored once instead of copied into payloads.
DEFAULT_THRESHOLD = 1024 * 1024

#: Uploads of literals at once (each streams through the server or to S3 on its own).
UPLOAD_WORKERS = 4
#: Literals too small to be worth asking ``sizeof`` about.
_SMALL_TYPES = (int, float, complex, bool, type(None), slice, range)

#: Per connection: ``{sha256 hex: upload URL}`` of the literals it stored.
_UPLOADED: weakref.WeakKeyDictionary[Kotta, dict[str, str]] = weakref.WeakKeyDictionary()


def threshold_bytes(value: int | str | None) -> int | None:
    """``literal_threshold`` as bytes: an int, a size like ``'1MiB'``; ``None`` or 0: never store."""
    if value is None:
        return None
    n = int(parse_bytes(value)) if isinstance(value, str) else int(value)
    if n < 0:
        raise ValueError(f"literal_threshold must be >= 0 bytes, got {value!r}")
    return n or None


def configured_threshold(default: int | None) -> int | None:
    """``dask.config``'s ``kotta.literal-threshold`` for this compute if set, else ``default``."""
    import dask.config

    conf = dask.config.get("kotta", default=None) or {}
    for name in ("literal-threshold", "literal_threshold"):
        if isinstance(conf, dict) and name in conf:
            return threshold_bytes(conf[name])
    return default


class Literals:
    """Replaces one ``get``'s large literals with references to uploads, uploading each once.

    Call it on each literal of the jobs being built, :meth:`take_refs` after each
    job (the literals that job uses), then :meth:`upload` once before
    submitting them, and :meth:`url` for each ref: a job's extra ``inputs``.
    """

    def __init__(self, konn: Kotta, threshold: int | None):
        self.konn = konn
        self.threshold = threshold
        #: ``id(value)`` -> (value, replacement): one pickle per object per ``get``.
        self._seen: dict[int, tuple[Any, Any]] = {}
        self._refs: dict[str, None] = {}
        #: Literals not stored yet, by digest (held until :meth:`upload`).
        self._pending: dict[str, Any] = {}
        #: Literals stored and bytes uploaded by this ``get`` (a cached one counts in neither).
        self.uploaded = 0
        self.uploaded_bytes = 0
        #: References to stored literals, one per job that uses one (each a copy saved).
        self.referenced = 0

    def __call__(self, value: Any) -> Any:
        """``value`` itself, or a ``_Literal`` naming its upload when it is large."""
        if self.threshold is None or isinstance(value, _SMALL_TYPES):
            return value
        if isinstance(value, (str, bytes)) and len(value) <= self.threshold:
            return value
        hit = self._seen.get(id(value))
        if hit is not None and hit[0] is value:
            out = hit[1]
        else:
            out = self._replace(value)
            self._seen[id(value)] = (value, out)  # (holds value, so its id stays its own)
        if isinstance(out, _Literal):
            self._refs[out.digest] = None
        return out

    def take_refs(self) -> list[str]:
        """Digests of the literals referenced since the last call (one job's)."""
        refs = list(self._refs)
        self._refs.clear()
        self.referenced += len(refs)
        return refs

    def url(self, digest: str) -> str:
        """The upload URL of a stored literal."""
        return _UPLOADED[self.konn][digest]

    def upload(self) -> None:
        """Store the literals referenced so far that are not stored yet, a few at a time."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        known = _UPLOADED.setdefault(self.konn, {})
        workers = min(UPLOAD_WORKERS, len(pending))
        with ThreadPoolExecutor(workers, thread_name_prefix="kotta-literal") as pool:
            futures = {pool.submit(self._upload, v, d): d for d, (v, _) in pending.items()}
        error: BaseException | None = None
        for future, digest in futures.items():
            # Every upload that worked is remembered (and deleted later), even when one failed.
            failed = future.exception()
            if failed is not None:
                error = error or failed
                continue
            known[digest] = future.result()
            self.uploaded += 1
            self.uploaded_bytes += pending[digest][1]
        if error is not None:
            raise error

    def _replace(self, value: Any) -> Any:
        try:
            if sizeof(value) <= self.threshold:
                return value
        except Exception:  # noqa: BLE001 - a sizeof that fails decides nothing: pickle and see
            pass
        # Its pickle, with large buffers (numpy's, pandas') kept out of band: hashing those
        # in place spares copying them when the literal turns out to be stored already.
        buffers: list[pickle.PickleBuffer] = []
        try:
            head = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
            raws = [b.raw() for b in buffers]
        except Exception:  # noqa: BLE001 - left in place, the payload's pickling says why
            return value
        size = len(head) + sum(r.nbytes for r in raws)
        if size <= self.threshold:  # type: ignore[operator]
            return value
        h = hashlib.sha256(head)
        for r in raws:
            h.update(r)
        digest = h.hexdigest()
        if digest not in _UPLOADED.get(self.konn, {}):
            self._pending[digest] = (value, size)
        return _Literal(f"{LITERAL_PREFIX}{digest}.pkl", digest)

    def _upload(self, value: Any, digest: str) -> str:
        name = f"{LITERAL_PREFIX}{digest}.pkl"
        with tempfile.TemporaryDirectory(prefix="kotta-literal-") as tmp:
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                cloudpickle.dump(value, f, protocol=5)  # in band: plain pickle.load reads it
            url = self.konn.upload_file(path, name=name)
        if staged_name(url) != name:  # (every store keeps the name it was given)
            raise KottaError(f"literal upload {url} would be staged under another name")
        return url


def delete_literals(konn: Kotta) -> int:
    """Delete the literals this connection stored; returns how many. Jobs that staged them
    keep their copies, but a resubmit of such a job can no longer stage them."""
    known = _UPLOADED.pop(konn, {})
    done = 0
    for url in known.values():
        try:
            konn.request("DELETE", "/api/v1/uploads", params={"url": url}, retry=False, timeout=5)
            done += 1
        except ServerUnavailableError:
            break  # the server is away: the rest stay ordinary uploads
        except KottaError:
            pass  # gone already
    return done


@atexit.register
def _delete_all() -> None:
    for konn in list(_UPLOADED.keys()):
        try:
            delete_literals(konn)
        except Exception:  # noqa: BLE001 - at exit, a leftover upload is no reason to fail
            pass
