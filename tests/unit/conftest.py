"""The unit layer: a temp SQLite file, a temp directory, the app in-process. No subprocess.

The fixtures that start real services live in ``tests/integration/conftest.py``, out of
this layer's reach: a unit test that asks for one fails with "fixture not found".
"""

from __future__ import annotations

import pytest

from dask_kotta.store.jobs import JobStore


@pytest.fixture
def store(tmp_path):
    """A fresh job store on a SQLite file of the test's own."""
    s = JobStore(str(tmp_path / "jobs.sqlite"))
    yield s
    s.close()


@pytest.fixture
def owner(store) -> int:
    return store.get_or_create_user("alice")
