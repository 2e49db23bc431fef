"""Per-job Python environments: built once per distinct requirement set, cached on the worker.

A job's ``requirements`` (requirements.txt text) are normalised (comments and
blank lines dropped, whitespace collapsed, sorted, de-duplicated) and hashed
with the worker's Python version and interpreter path; that key names one
virtual environment under the cache directory::

    KOTTA_ENV_DIR/                      (default ~/.cache/dask-kotta/envs)
      locks/<key>.lock                  flock: shared while a job runs in it, exclusive to build
      <key>/                            the venv; <key>/.kotta-env.json is written last
      <key>/.../site-packages/_kotta_child.py   the child entry point (a copy of child.py)

Jobs that want the same environment at the same time, in threads or in
processes of one machine, serialise on the key's file lock: the first builds,
the others wait and then reuse it. A build is ``uv venv`` + ``uv pip install``
where uv is available (``venv`` + pip otherwise), under a timeout; its log is
appended to the job's STDERR. A failed or timed-out build is removed, not
cached, and raises :class:`EnvironmentBuildError` with pip's last lines.

The environment does not see the worker's site-packages: it gets the
requirements, cloudpickle (the worker's version, unless the requirements name
one) and the child module as a top-level ``_kotta_child``, which needs only
the standard library and cloudpickle. The cache is bounded by size
(``KOTTA_ENV_CACHE_BYTES``, default 5 GiB): after a build, the least recently
used environments that no job holds are removed until it fits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import KottaError
from .process import WALLTIME, run_process

#: Where environments are cached (shared by every worker process of a machine).
DIR_VAR = "KOTTA_ENV_DIR"
#: Upper bound of the cache's size, in bytes.
MAX_BYTES_VAR = "KOTTA_ENV_CACHE_BYTES"
#: Longest one build may take, in seconds.
TIMEOUT_VAR = "KOTTA_ENV_BUILD_TIMEOUT"
#: ``uv`` (default when found) or ``pip``.
BUILDER_VAR = "KOTTA_ENV_BUILDER"

DEFAULT_MAX_BYTES = 5 * 1024**3
DEFAULT_TIMEOUT_S = 900.0
MARKER = ".kotta-env.json"
CHILD_MODULE = "_kotta_child"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class EnvironmentBuildError(KottaError):
    """A job's environment could not be built (pip's error or a timeout is in the message)."""


@dataclass
class Environment:
    """A ready environment, held for one job."""

    key: str
    path: Path
    python: Path
    built: bool  # this job built it
    seconds: float  # time spent getting it (waiting for a lock included)

    def child_env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this environment activated and nothing of the worker's leaking in."""
        env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{base.get('PATH', os.defpath)}"
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def child_command(self, private: Path) -> list[str]:
        """The command that runs a python job's child in this environment."""
        return [str(self.python), "-m", CHILD_MODULE, str(private)]


def normalise(requirements: str | None) -> list[str]:
    """The requirement lines that matter, in a canonical order."""
    lines = set()
    for raw in (requirements or "").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            lines.add(" ".join(line.split()))
    return sorted(lines)


def env_key(lines: list[str]) -> str:
    """The cache key of a normalised requirement set on this interpreter."""
    v = sys.version_info
    ident = "\n".join([sys.implementation.name, f"{v.major}.{v.minor}.{v.micro}",
                       os.path.realpath(sys.executable), *lines])  # fmt: skip
    return f"py{v.major}{v.minor}-{hashlib.sha256(ident.encode()).hexdigest()[:20]}"


def _site_packages(env: Path) -> Path:
    return (
        env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )


def find_uv() -> list[str] | None:
    """How to run uv here: the binary next to this Python, the uv package's, or on PATH."""
    beside = Path(sys.executable).with_name("uv")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    try:
        import uv

        return [uv.find_uv_bin()]
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    return [found] if found else None


def _dir_size(path: Path) -> int:
    total, seen = 0, set()
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _flock(fd: int, mode: int, timeout: float) -> bool:
    """flock with a deadline (flock itself has none)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _tail(log: Path, lines: int = 12, chars: int = 1500) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.startswith("kotta:")]
    return "\n".join(kept[-lines:])[-chars:]


def _share(path: Path) -> None:
    """Make a built environment readable (and its programs runnable) by every uid.

    A build under a strict umask (0077, as a service's data wants) would
    otherwise leave it to the worker's uid alone, and a contained job runs as another.
    """
    for root, _dirs, files in os.walk(path):
        os.chmod(root, os.stat(root).st_mode | 0o755)
        for name in files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, st.st_mode | (0o755 if st.st_mode & 0o100 else 0o644))


class EnvCache:
    """The environments of one machine; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_bytes: int | None = None,
        build_timeout_s: float | None = None,
        builder: str | None = None,
    ):
        default_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.root = Path(root or os.environ.get(DIR_VAR) or default_root / "dask-kotta" / "envs")
        self.max_bytes = int(max_bytes or os.environ.get(MAX_BYTES_VAR) or DEFAULT_MAX_BYTES)
        self.build_timeout_s = float(
            build_timeout_s or os.environ.get(TIMEOUT_VAR) or DEFAULT_TIMEOUT_S
        )
        self.builder = builder or os.environ.get(BUILDER_VAR) or "uv"
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            # Contained jobs run as uids of their own: they must reach (not change) the envs.
            self.root.chmod(0o755)

    def ready(self, key: str) -> bool:
        return (self.root / key / MARKER).is_file()

    @contextlib.contextmanager
    def use(
        self,
        requirements: str,
        log: Path,
        timeout_s: float | None = None,
        stop_reason: Callable[[], str | None] = lambda: None,
    ) -> Iterator[Environment]:
        """Hold the environment for ``requirements`` (building it if needed) while the block runs.

        The build's output is appended to ``log`` (the job's STDERR). Raises
        ``EnvironmentBuildError`` if the build fails or takes over ``timeout_s``.
        """
        start = time.monotonic()
        lines = normalise(requirements)
        key = env_key(lines)
        timeout = min(self.build_timeout_s, timeout_s or self.build_timeout_s)
        path = self.root / key
        # Waiting for another job's build is bounded by that build's own timeout.
        wait_s = self.build_timeout_s + 60
        fd = os.open(self.root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            built = False
            while True:
                if not _flock(fd, fcntl.LOCK_SH, wait_s):
                    raise EnvironmentBuildError(f"timed out waiting for environment {key}")
                if self.ready(key):
                    break
                fcntl.flock(fd, fcntl.LOCK_UN)
                if not _flock(fd, fcntl.LOCK_EX, wait_s):
                    raise EnvironmentBuildError(f"timed out waiting for environment {key}")
                if not self.ready(key):
                    self._build(key, lines, path, log, timeout, stop_reason)
                    built = True
                # Downgrade, then check again: an evictor may have slipped between the two.
                fcntl.flock(fd, fcntl.LOCK_SH)
                if self.ready(key):
                    break
            self._install_child(path)
            os.utime(path / MARKER)  # least-recently-used order
            seconds = time.monotonic() - start
            with open(log, "a") as f:
                how = f"built in {seconds:.1f} s" if built else f"cached, ready in {seconds:.2f} s"
                f.write(f"kotta: environment {key} {how}\n")
            if built:
                self.evict(keep=key)
            yield Environment(key, path, path / "bin" / "python", built, seconds)
        finally:
            os.close(fd)  # releases the lock

    def _commands(self, path: Path, reqfile: Path, lines: list[str]) -> tuple[str, list[list[str]]]:
        import cloudpickle

        extra = []
        names = {m.group(1).lower().replace("_", "-") for ln in lines if (m := _NAME.match(ln))}
        if "cloudpickle" not in names:
            # The child unpickles the payload: the worker's version is the one known to work.
            extra = [f"cloudpickle=={cloudpickle.__version__}"]
        py = str(path / "bin" / "python")
        uv = find_uv() if self.builder == "uv" else None
        if uv:
            return "uv", [
                [*uv, "venv", "--quiet", "--python", sys.executable, str(path)],
                [*uv, "pip", "install", "--python", py, "-r", str(reqfile), *extra],
            ]
        return "pip", [
            [sys.executable, "-m", "venv", str(path)],
            [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
             "-r", str(reqfile), *extra],
        ]  # fmt: skip

    def _build(
        self,
        key: str,
        lines: list[str],
        path: Path,
        log: Path,
        timeout: float,
        stop_reason: Callable[[], str | None],
    ) -> None:
        shutil.rmtree(path, ignore_errors=True)  # what a crashed or failed build left
        reqfile = self.root / "locks" / f"{key}.requirements.txt"
        reqfile.write_text("\n".join(lines) + "\n")
        builder, commands = self._commands(path, reqfile, lines)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DASK_", "KOTTA_")) and k not in ("PYTHONPATH", "PYTHONHOME",
                                                                     "VIRTUAL_ENV")}  # fmt: skip
        env.update(UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1", PIP_NO_INPUT="1")
        with open(log, "a") as f:
            f.write(f"kotta: building environment {key} with {builder}: {', '.join(lines)}\n")
        start = time.monotonic()
        problem = None
        for cmd in commands:
            left = timeout - (time.monotonic() - start)
            try:
                outcome = run_process(cmd, str(self.root), str(log), str(log), env, max(left, 0.1),
                                      None, stop_reason)  # fmt: skip
            except OSError as e:
                problem = f"cannot run {cmd[0]}: {e.strerror or e}"
                break
            if outcome.killed == WALLTIME:
                problem = f"timed out after {timeout:.0f} s"
                break
            if outcome.killed:
                problem = f"stopped: {outcome.killed}"
                break
            if outcome.returncode != 0:
                problem = f"{cmd[1] if builder == 'pip' else ' '.join(cmd[1:3])} exited with code {outcome.returncode}"
                break
        if problem is None:
            try:
                self._install_child(path)
                _share(path)
                meta = {"key": key, "requirements": lines, "builder": builder,
                        "python": sys.version.split()[0], "built_at": time.time(),
                        "seconds": round(time.monotonic() - start, 3), "size": _dir_size(path)}  # fmt: skip
                tmp = path / (MARKER + ".tmp")
                tmp.write_text(json.dumps(meta))
                os.replace(tmp, path / MARKER)  # the environment exists from here on
                return
            except OSError as e:
                problem = f"cannot finish the environment: {e}"
        shutil.rmtree(path, ignore_errors=True)
        with open(log, "a") as f:
            f.write(f"kotta: environment build failed ({problem})\n")
        tail = _tail(log)
        raise EnvironmentBuildError(
            f"environment build failed ({problem}) for requirements {', '.join(lines)}"
            + (f":\n{tail}" if tail else "")
        )

    def _install_child(self, path: Path) -> None:
        """Put the current child module into the environment (refreshed if the runner changed)."""
        src = (Path(__file__).with_name("child.py")).read_bytes()
        dest = _site_packages(path) / f"{CHILD_MODULE}.py"
        try:
            if dest.read_bytes() == src:
                return
        except OSError:
            pass
        tmp = dest.with_name(f".{CHILD_MODULE}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(src)
        os.replace(tmp, dest)

    def entries(self) -> list[dict]:
        """Metadata of every ready environment, least recently used first."""
        out = []
        for marker in self.root.glob(f"*/{MARKER}"):
            try:
                meta = json.loads(marker.read_text())
                meta["used_at"] = marker.stat().st_mtime
            except (OSError, ValueError):
                continue
            out.append(meta)
        return sorted(out, key=lambda m: m["used_at"])

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used environments no job holds until the cache fits its bound."""
        entries = self.entries()
        total = sum(int(m.get("size", 0)) for m in entries)
        removed = []
        for meta in entries:
            if total <= self.max_bytes:
                break
            key = meta["key"]
            if key == keep:
                continue
            fd = os.open(self.root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a job is running in it
            try:
                (self.root / key / MARKER).unlink(missing_ok=True)
                shutil.rmtree(self.root / key, ignore_errors=True)
                total -= int(meta.get("size", 0))
                removed.append(key)
            finally:
                os.close(fd)
        return removed


_cache: EnvCache | None = None
_cache_lock = threading.Lock()


def cache() -> EnvCache:
    """This worker process's view of the machine's environment cache (configured from env vars)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = EnvCache()
        return _cache
