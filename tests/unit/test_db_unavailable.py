"""A job database that cannot be reached answers 503 with Retry-After, not a bare 500.

The app in-process (Starlette's TestClient) over a SQLite file in a directory of its own;
the test closes the store's connections and moves that directory away, so the next
connection fails as a lost database server's would (``OperationalError``).
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy.exc as sa_exc
from distributed import LocalCluster
from starlette.testclient import TestClient

from dask_kotta import defaults as d
from dask_kotta.server.app import create_app, database_problem
from dask_kotta.server.auth import hash_token, new_token
from dask_kotta.server.service import ServerConfig
from dask_kotta.store.jobs import JobStore

QUEUES = {"Test": {"vcpus": 1, "memory": "1GB", "max_walltime_min": 1440}}


@pytest.fixture
def scheduler():
    with LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def test_an_unreachable_database_answers_503_with_retry_after(scheduler, tmp_path):
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    database = str(db_dir / "jobs.sqlite")
    queues = tmp_path / "queues.json"
    queues.write_text(json.dumps(QUEUES))
    store = JobStore(database)
    token = new_token()
    store.add_token(store.get_or_create_user("alice"), hash_token(token))
    store.close()
    config = ServerConfig(
        data_dir=tmp_path / "data", scheduler=scheduler, public_url="http://testserver",
        queues_file=str(queues), database=database,
    )  # fmt: skip
    app = create_app(config)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        assert client.get("/api/v1/jobs", headers=headers).status_code == 200
        app.state.svc.store.engine.dispose()  # no open connection keeps the old file alive
        away = db_dir.rename(tmp_path / "db-away")  # as a database server gone away
        # (not /whoami: the service keeps known tokens in memory)
        for path in ("/api/v1/jobs", "/api/v1/jobs/abc"):
            r = client.get(path, headers=headers)
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == str(d.DB_RETRY_AFTER_S)
            assert r.headers["content-type"] == "application/json"
            text = r.json()["detail"]
            assert text.startswith("the job database is unavailable: unable to open database file")
            assert "SELECT" not in text  # the driver's words, not the statement
        # Back once the database is: the store reconnects by itself.
        away.rename(db_dir)
        assert client.get("/api/v1/jobs", headers=headers).json()["jobs"] == []


def test_the_problem_names_no_credentials():
    orig = Exception(
        'connection to server at "db" failed: postgresql://kotta:s3cret@db:5432/jobs '
        "password=hunter2 refused\nSELECT secret FROM tokens"
    )
    exc = sa_exc.OperationalError("SELECT 1", {}, orig)
    text = database_problem(exc)
    assert "s3cret" not in text and "hunter2" not in text and "SELECT" not in text
    assert "postgresql://kotta:***@db:5432/jobs" in text and "refused" in text
