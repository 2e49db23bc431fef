"""A real PostgreSQL server for tests, from Debian's packages, in a temp directory.

PostgreSQL refuses to run as root, so as root (CI) it runs as the `postgres`
system user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from kotta_testing import Proc, free_port, kill_group, stopped_on_error, wait_for


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("postgres")
    return Path(which).parent if which else None


class PostgresServer:
    def __init__(self, base: Path):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self.base = Path(base)
        self.data = self.base / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://kotta@127.0.0.1:{self.port}/kotta"
        self.proc: Proc | None = None
        self._as = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, cwd="/")

    def start(self) -> PostgresServer:
        self.base.mkdir(parents=True, exist_ok=True)
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            # The postgres user must be able to reach the temp directory.
            for parent in self.base.parents:
                if str(parent) in ("/", "/tmp"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "kotta",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        args = [*self._as, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.base}",
                "-c", "fsync=off"]  # fmt: skip
        self.proc = Proc(args, self.base / "postgres.log", Path("/")).start()
        with stopped_on_error(self):
            wait_for(self._ready, 60, "PostgreSQL", interval=0.2)
            self._run(
                str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                "-U", "kotta", "kotta",
            )  # fmt: skip
        return self

    def state(self) -> dict:
        """What another test process needs to attach to this running server (``shared.py``)."""
        return {"base": str(self.base), "port": self.port, "pgid": self.proc.proc.pid,
                "stop": "int", "order": 2}  # fmt: skip

    @classmethod
    def attach(cls, state: dict) -> PostgresServer:
        """The server another test process started: this one may use it, not stop it."""
        p = cls(Path(state["base"]))
        p.port = state["port"]
        p.url = f"postgresql+psycopg://kotta@127.0.0.1:{p.port}/kotta"
        p.proc = Proc.attached(state["pgid"], p.base / "postgres.log")
        return p

    def _ready(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"postgres exited:\n{self.proc.log()[-3000:]}")
        r = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        )
        return r.returncode == 0

    def stop(self) -> None:
        if self.proc and not self.proc.owned:
            return
        if self.proc and self.proc.proc:
            # SIGINT to the group: postgres itself, not only `runuser`, which does not pass it
            # on (the stop then waited its whole timeout). SIGINT is a fast shutdown.
            kill_group(self.proc.proc, signal.SIGINT)
            try:
                self.proc.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc:
            self.proc.stop(timeout=10)
