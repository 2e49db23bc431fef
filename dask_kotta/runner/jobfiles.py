"""Files a job wrote, opened by the runner without trusting them.

The runner reads what a job left in its directory (its result, its STDOUT
while it runs and after); the job may have put a symlink, a FIFO or a hard link
there instead, to make the runner read the service's own files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import UnsafePathError
from ..paths import resolve_inside


def job_file(workdir: Path, name: str) -> BinaryIO | None:
    """``name`` in ``workdir``, written by the job, opened for reading if it is a plain file
    of the job's own.

    The job has ended (its processes are gone), but what it left is untrusted: a
    symlink anywhere on the way (``.kotta`` itself may have become one), a FIFO
    or a hard link where its result should be is treated as no file, never
    followed: it could name the service's own files.
    """
    try:
        path = resolve_inside(workdir, name)
    except UnsafePathError:
        return None
    if path != Path(workdir).resolve() / name:
        return None  # a symlink on the way, even one that stays inside
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def read_job_file(workdir: Path, name: str) -> str:
    """The text of a file the job wrote (see :func:`job_file`); OSError if there is none."""
    f = job_file(workdir, name)
    if f is None:
        raise FileNotFoundError(name)
    with f:
        return f.read().decode()
