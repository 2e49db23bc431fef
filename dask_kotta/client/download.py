"""Downloading a job's outputs into a local directory, safely.

Used by ``Kotta.download`` (``dask-kotta get``, ``submit --wait``). Every file is
streamed to a temporary name beside its destination and only then put in place, so
an interrupted download leaves no half file under the real name; without
``overwrite`` it is put there with a hard link, which fails rather than replace a
file that appeared meanwhile. A name that would land outside the directory (``..``,
an absolute path, a symlinked subdirectory leading out) is refused before any byte
is fetched, and so is every existing file, all of them named at once.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import defaults as d
from ..errors import JobError, KottaError, NotFoundError, UnsafePathError
from ..paths import safe_relpath
from .kout import KOut

if TYPE_CHECKING:  # annotations only: connection imports this module
    from .connection import Kotta


def place(directory: Path, name: str) -> Path:
    """Where output ``name`` goes under ``directory``; ``UnsafePathError`` if it would be
    outside it (``..``, absolute, or through a symlink that leads out)."""
    try:
        rel = safe_relpath(name, "output name")
    except UnsafePathError as e:
        raise UnsafePathError(f"{e}: refused, it would be written outside {directory}") from None
    base = directory.resolve()
    dest = base / rel
    # Resolving follows the symlinks already on the way (a subdirectory linked elsewhere).
    if not dest.resolve().is_relative_to(base):
        raise UnsafePathError(
            f"output name {name!r} would be written outside {directory} (through a symlink): "
            "refused"
        )
    return dest


def chosen(info: dict[str, Any], names: Iterable[str] | None) -> list[dict[str, Any]]:
    """The outputs of job record ``info`` that ``names`` asks for (None: all of them);
    ``NotFoundError`` naming each one the job does not have, and what it has."""
    have = {o["name"]: o for o in info["outputs"]}
    if names is None:
        return list(have.values())
    out, missing = [], []
    for name in names:
        try:
            key = safe_relpath(name, "output name")
        except UnsafePathError as e:
            raise UnsafePathError(f"{e}: refused, outputs are relative names") from None
        if key in have:
            out.append(have[key])
        else:
            missing.append(name)
    if missing:
        listed = ", ".join(have) or "none"
        raise NotFoundError(
            f"job {info['id']} has no output {', '.join(repr(m) for m in missing)} "
            f"(its outputs: {listed})"
        )
    return out


def download(
    konn: Kotta,
    job_id: str,
    names: Iterable[str] | None = None,
    directory: str | os.PathLike = ".",
    overwrite: bool = False,
) -> list[Path]:
    """Download outputs of an ended job of yours into ``directory`` (made if missing).

    See :meth:`Kotta.download`. Returns the paths written, in the job's order.
    """
    info = konn.job(job_id)
    if info["status"] not in d.TERMINAL_STATUSES:
        raise JobError(
            f"job {job_id} is {info['status']}: its outputs are complete only once it ends; "
            f"wait for it (dask-kotta status {job_id}), then get them",
            job_id,
        )
    outs = chosen(info, None if names is None else list(names))
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    plan = [(o, place(root, o["name"])) for o in outs]
    if not overwrite:
        there = [str(dest) for _, dest in plan if dest.exists() or dest.is_symlink()]
        if there:
            raise KottaError(
                f"not overwriting {', '.join(there)}: move them away, or pass --force "
                "(overwrite=True); nothing was downloaded"
            )
    written = []
    for out, dest in plan:
        kout = KOut(out["url"], konn=konn, name=out["name"], store_url=out.get("store_url"))
        _fetch_to(kout, dest, overwrite)
        written.append(dest)
    return written


def _fetch_to(kout: KOut, dest: Path, overwrite: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in kout._chunks():
                f.write(chunk)
        if overwrite:
            os.replace(tmp, dest)
            return
        try:
            os.link(tmp, dest)  # fails, rather than replace, if dest appeared meanwhile
        except FileExistsError:
            raise KottaError(f"not overwriting {dest}: it appeared during the download") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            # A file system without hard links: check, then rename (a narrow window).
            if dest.exists():
                raise KottaError(
                    f"not overwriting {dest}: it appeared during the download"
                ) from None
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
