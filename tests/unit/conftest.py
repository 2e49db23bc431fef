"""The unit layer: a temp SQLite file, a temp directory, the app in-process. No subprocess.

The session fixtures of ``tests/conftest.py`` start real services; a unit test that asked
for one would stop being fast, so here each of them fails at once instead.
"""

from __future__ import annotations

import pytest

from dask_kotta.store.jobs import JobStore


def _no_service(request):
    pytest.fail(
        f"{request.node.nodeid} asked for {request.fixturename!r}: tests/unit starts no "
        "service (put a test that needs one with the integration tests)",
        pytrace=False,
    )


service = pytest.fixture(_no_service, name="service")
konn = pytest.fixture(_no_service, name="konn")
other_user = pytest.fixture(_no_service, name="other_user")
s3_server = pytest.fixture(_no_service, name="s3_server")
pg_server = pytest.fixture(_no_service, name="pg_server")


@pytest.fixture
def store(tmp_path):
    """A fresh job store on a SQLite file of the test's own."""
    s = JobStore(str(tmp_path / "jobs.sqlite"))
    yield s
    s.close()


@pytest.fixture
def owner(store) -> int:
    return store.get_or_create_user("alice")
