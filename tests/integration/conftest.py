"""The integration layer's fixtures: one real Kotta service (server + LocalCluster) per run.

Started on first use, shared by the suite's processes and stopped at the end
(``shared.py``): a SeaweedFS S3 server and a PostgreSQL server likewise, for the
tests that need them.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kotta_testing import Service, own_name
from shared import shared

# Test and Prod as documented, a Tiny queue whose 300 MiB memory limit and 40-process limit a
# test can hit cheaply (and whose jobs are held to 1 CPU), and an Offline queue (network: false).
QUEUES = Path(__file__).with_name("queues.json")


@pytest.fixture(scope="session")
def service():
    """`dask-kotta up` on a free port with a temp data dir, 2 workers: one for all of the
    suite's processes (``shared.py``), each with an admin of its own (``service.user``)."""

    def start(base: Path) -> Service:
        # --max-pending: a limit test_hostile_input can pass with one submit.
        extra = ["--queues", str(QUEUES), "--max-payload", "32MiB", "--max-pending", "1000"]
        # A secret of the workers' environment that no job may see (test_containment).
        env = {"SERVICE_SECRET_CANARY": f"canary-{uuid.uuid4().hex}"}
        return Service(base, extra=extra, env=env).start()

    svc = shared("service", start, Service.attach)
    name = own_name("tester")
    return svc if name == svc.user else svc.as_user(name, admin=True)


@pytest.fixture(scope="session")
def konn(service):
    return service.konn()


@pytest.fixture(scope="session")
def other_user(service):
    """Credentials of a second user of the same service (``own_name("mallory")``)."""
    return service.token(own_name("mallory"), service.base / f"{own_name('mallory')}.auth")


@pytest.fixture(scope="session")
def s3_server():
    """A SeaweedFS S3 server on loopback for the whole run (started on first use)."""
    from s3server import S3Server

    return shared("s3", lambda base: S3Server(base).start(), S3Server.attach)


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server from Debian's packages, on loopback, for the whole run."""
    from pgserver import PostgresServer

    return shared("pg", lambda base: PostgresServer(base).start(), PostgresServer.attach)


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium and chromium-driver, installed if missing (the test fails if it cannot)."""
    from browser import ensure_chromium

    ensure_chromium()
