"""Shared fixtures: one real Kotta service (server + LocalCluster) per test session."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest
from kotta_testing import Service

# Test and Prod as documented, a Tiny queue whose 300 MiB memory limit and 40-process limit a
# test can hit cheaply, and an Offline queue (network: false).
QUEUES = Path(__file__).with_name("queues.json")


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """`dask-kotta up` on a free port with a temp data dir, 2 workers."""
    extra = ["--queues", str(QUEUES), "--max-payload", "32MiB"]
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


def pytest_addoption(parser):
    parser.addoption(
        "--order",
        default="file",
        help="run tests in 'file' order (default), 'reverse', or 'random' / 'random:SEED', "
        "to show that no test depends on another having run first",
    )


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--order")
    if order == "file":
        return
    # Modules stay whole (as pytest-randomly keeps them), so module-scoped services start once.
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(modules.values())
    if order == "reverse":
        groups.reverse()
        for g in groups:
            g.reverse()
    elif order.startswith("random"):
        seed = int(order.partition(":")[2] or random.randrange(10**6))
        print(f"--order=random:{seed}")
        rng = random.Random(seed)
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
    else:
        raise pytest.UsageError(f"--order must be file, reverse or random[:SEED], not {order!r}")
    items[:] = [item for g in groups for item in g]
