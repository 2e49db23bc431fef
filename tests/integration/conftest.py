"""The integration layer's fixtures: one real Kotta service (server + LocalCluster) per session.

Started on first use and stopped at the end: a SeaweedFS S3 server and a
PostgreSQL server likewise, for the tests that need them.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kotta_testing import Service

# Test and Prod as documented, a Tiny queue whose 300 MiB memory limit and 40-process limit a
# test can hit cheaply (and whose jobs are held to 1 CPU), and an Offline queue (network: false).
QUEUES = Path(__file__).with_name("queues.json")


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """`dask-kotta up` on a free port with a temp data dir, 2 workers."""
    # --max-pending: a limit test_hostile_input can pass with one submit.
    extra = ["--queues", str(QUEUES), "--max-payload", "32MiB", "--max-pending", "1000"]
    # A secret of the workers' environment that no job may see (test_containment).
    env = {"SERVICE_SECRET_CANARY": f"canary-{uuid.uuid4().hex}"}
    svc = Service(tmp_path_factory.mktemp("service"), extra=extra, env=env).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def konn(service):
    return service.konn()


@pytest.fixture(scope="session")
def other_user(service, tmp_path_factory):
    """Credentials of a second user of the same service."""
    path = tmp_path_factory.mktemp("other") / "other.auth"
    service.token("mallory", path)
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on loopback for the whole session (started on first use)."""
    from s3server import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A PostgreSQL server from Debian's packages, on loopback, for the whole session."""
    from pgserver import PostgresServer

    server = PostgresServer(tmp_path_factory.mktemp("pg")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium and chromium-driver, installed if missing (the test fails if it cannot)."""
    from browser import ensure_chromium

    ensure_chromium()
