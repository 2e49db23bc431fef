"""Path checks shared by the server, the object store and the runner.

Every relative path a user names (outputs, script names, object keys) goes
through :func:`safe_relpath` before it touches a file system or a bucket, and
every file opened inside a directory goes through :func:`resolve_inside`.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .errors import UnsafePathError


def safe_relpath(name: str, what: str = "path") -> str:
    """Return ``name`` normalised as a relative POSIX path, or raise.

    Refused: empty names, absolute paths, ``..`` components, backslashes and NUL.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{what} must be a non-empty relative path, got {name!r}")
    name = name.strip()
    if "\x00" in name or "\\" in name:
        raise UnsafePathError(f"{what} {name!r} contains a NUL or backslash")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("~"):
        raise UnsafePathError(
            f"{what} {name!r} is absolute; give a path relative to the job's directory"
        )
    parts = [part for part in p.parts if part not in (".", "")]
    if not parts or any(part == ".." for part in parts):
        raise UnsafePathError(f"{what} {name!r} escapes the job's directory ('..' is not allowed)")
    return "/".join(parts)


def resolve_inside(root: str | os.PathLike, name: str, what: str = "path") -> Path:
    """Join ``name`` under ``root`` and check that, symlinks resolved, it stays inside."""
    rel = safe_relpath(name, what)
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise UnsafePathError(f"{what} {name!r} resolves outside the job's directory (symlink?)")
    return full


def split_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Split Kotta's comma-separated ``inputs``/``outputs`` strings; lists pass through."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]
