"""Retention with a job's own keep time: the sweep, the spec's checks, the API and the clients.

The store's tests run on a temp SQLite file and a local object store; the API's on the app
in-process (TestClient), with a server cap (``max_keep_days``) to refuse and to sweep by.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from distributed import LocalCluster
from starlette.testclient import TestClient

from dask_kotta import defaults as d
from dask_kotta.cli import main
from dask_kotta.client.job import KottaJob
from dask_kotta.dask.annotations import AnnotationError, JobSettings, SettingsResolver
from dask_kotta.errors import InvalidRequestError
from dask_kotta.jobspec import JobSpec
from dask_kotta.server.app import create_app
from dask_kotta.server.auth import hash_token, new_token
from dask_kotta.server.queues import Queue
from dask_kotta.server.service import ServerConfig
from dask_kotta.server.validate import check_spec
from dask_kotta.store import retention
from dask_kotta.store.jobs import JobStore
from dask_kotta.store.objects import job_key, open_store
from dask_kotta.store.schema import jobs

DAY = 86400.0
NOW = 1_800_000_000.0


def ended_job(store: JobStore, owner: int, ended_days_ago: float, **spec) -> str:
    """A completed script job that ended ``ended_days_ago`` before :data:`NOW`."""
    ((job, _),) = store.insert_jobs(
        owner, [{"jobtype": "script", "queue": "Test", "walltime_min": 1, "script": "x", **spec}]
    )
    with store.engine.begin() as c:
        c.execute(
            jobs.update()
            .where(jobs.c.id == job["id"])
            .values(status=d.COMPLETED, ended_at=NOW - ended_days_ago * DAY)
        )
    return job["id"]


@pytest.fixture
def objects(tmp_path):
    return open_store(None, tmp_path / "data")


def test_the_sweep_honours_each_job_s_own_keep_time(store, owner, objects):
    jid = {
        # a keep of one hour, ended two hours ago: goes, whatever the server's default
        "short": ended_job(store, owner, 2 / 24, keep_days=1 / 24),
        # a keep of 100 days, ended 40 days ago: stays, though the default (30) has passed
        "long": ended_job(store, owner, 40, keep_days=100),
        # for ever (0), ended 10 years ago: stays
        "forever": ended_job(store, owner, 3650, keep_days=0),
        # no keep of its own: the server's 30 days
        "default_old": ended_job(store, owner, 31),
        "default_new": ended_job(store, owner, 29),
    }
    ((pending, _),) = store.insert_jobs(
        owner,
        [
            {
                "jobtype": "script",
                "queue": "Test",
                "walltime_min": 1,
                "script": "x",
                "keep_days": 1e-6,
            }
        ],  # fmt: skip
    )
    for j in [*jid.values(), pending["id"]]:
        objects.put_bytes(job_key(owner, j, "out.txt"), b"x")
    assert store.get(jid["short"])["keep_s"] == pytest.approx(3600)
    assert store.get(jid["default_old"])["keep_s"] is None

    assert retention.sweep(store.retention, objects, 30 * DAY, now=NOW) == 2
    gone = {k for k, j in jid.items() if store.get(j) is None}
    assert gone == {"short", "default_old"}
    for k, j in jid.items():
        assert (objects.size(job_key(owner, j, "out.txt")) is None) == (k in gone), k
    assert store.get(pending["id"]) is not None, "a job that has not ended is never swept"
    assert store.events(jid["short"]) == []


def test_with_the_server_keeping_every_job_a_job_s_own_keep_time_still_applies(
    store, owner, objects
):
    short = ended_job(store, owner, 1, keep_days=0.5)
    default = ended_job(store, owner, 1000)
    assert retention.sweep(store.retention, objects, 0, now=NOW) == 1  # `--keep 0`
    assert store.get(short) is None and store.get(default) is not None


def test_a_server_maximum_bounds_every_keep_time_for_ever_included(store, owner, objects):
    kept = {
        "forever": ended_job(store, owner, 11, keep_days=0),
        "long": ended_job(store, owner, 11, keep_days=100),
        "default": ended_job(store, owner, 11),
        "within": ended_job(store, owner, 9, keep_days=0),
        "short": ended_job(store, owner, 2, keep_days=1),
    }
    n = retention.sweep(store.retention, objects, 0, now=NOW, max_keep_s=10 * DAY)
    assert n == 4
    assert {k for k, j in kept.items() if store.get(j) is not None} == {"within"}


def test_the_sweep_walks_ended_jobs_by_an_index(store):
    with store.engine.connect() as c:
        plan = c.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE ended_at < 5 ORDER BY ended_at"
        ).all()
    assert any("jobs_ended" in str(row) for row in plan), plan


# -- the spec ------------------------------------------------------------------------------

QUEUES = {"Test": Queue("Test", 2, 4 * 2**30, 1440)}
SCRIPT = {"jobtype": "script", "script": "echo hi"}


@pytest.mark.parametrize(
    "value, days", [(None, None), (0, 0.0), (0.5, 0.5), ("7", 7.0), (d.MAX_JOB_KEEP_DAYS, 36525.0)]
)
def test_keep_days_accepted(value, days):
    spec = check_spec({**SCRIPT, "keep_days": value}, QUEUES, False)
    assert spec.get("keep_days") == days
    if value is None:
        assert "keep_days" not in spec, "omitted: the server's default, and old servers' spec"


@pytest.mark.parametrize(
    "value, says",
    [
        (-1, "keep_days must be 0 (keep the job for ever) or a number of days up to 36525, got -1"),
        (float("inf"), "keep_days must be 0 (keep the job for ever) or a number"),
        (float("nan"), "keep_days must be 0 (keep the job for ever) or a number"),
        (1e9, "up to 36525, got 1000000000.0"),
        ("soon", "keep_days 'soon' is not a number of days"),
        (True, "keep_days True is not a number of days"),
        ([1], "keep_days [1] is not a number of days"),
    ],
)
def test_keep_days_refused_naming_the_field(value, says):
    with pytest.raises(InvalidRequestError) as e:
        check_spec({**SCRIPT, "keep_days": value}, QUEUES, False)
    assert e.value.status == 400 and says in str(e.value)
    with pytest.raises(InvalidRequestError, match="keep_days"):  # the client's own check
        KottaJob(script="x", keep_days=value).spec()


def test_a_server_maximum_refuses_longer_and_for_ever():
    assert check_spec({**SCRIPT, "keep_days": 10}, QUEUES, False, 10)["keep_days"] == 10
    assert "keep_days" not in check_spec(SCRIPT, QUEUES, False, 10)
    for value, says in ((11, "keep_days 11 days is over"), (0, "keep_days 0 (for ever) is over")):
        with pytest.raises(
            InvalidRequestError, match=re.escape(f"{says} this server's maximum of 10 days")
        ):
            check_spec({**SCRIPT, "keep_days": value}, QUEUES, False, 10)


def test_every_way_to_describe_a_job_carries_keep_days():
    assert KottaJob(script="x", keep_days=2).to_spec()["keep_days"] == 2.0
    assert "keep_days" not in KottaJob(script="x").to_spec()
    assert JobSpec.parse({**SCRIPT, "keep_days": 0}).keep_days == 0
    r = SettingsResolver(JobSettings("Test", 5, keep_days=3), lambda: {})
    assert r.resolve("k", None)[0].keep_days == 3
    s = r.resolve("k", {"keep_days": 0.25})[0]
    assert s.keep_days == 0.25 and s.record()["keep_days"] == 0.25
    assert s != r.resolve("k", {"keep_days": 1})[0], "different keeps never share a job"
    with pytest.raises(AnnotationError, match=r"task 'k': keep_days must be 0 .*, got -2"):
        r.resolve("k", {"keep_days": -2})
    assert "keep_days" not in JobSettings("Test", 5).record()


def test_the_commands_document_it():
    run = CliRunner().invoke
    for cmd, flag in (("submit", "--keep"), ("up", "--max-keep"), ("server", "--max-keep"),
                      ("gc", "--max-keep")):  # fmt: skip
        r = run(main, [cmd, "--help"])
        assert r.exit_code == 0 and flag in r.stdout, (cmd, r.output)
    assert "0 keeps it for ever" in run(main, ["submit", "--help"]).stdout.replace("\n", " ")


# -- the API -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """``(client, headers, service)`` of an app whose --max-keep is 10 days."""
    data = tmp_path_factory.mktemp("data")
    queues = data / "queues.json"
    queues.write_text(json.dumps({"Test": {"vcpus": 1, "memory": "1GB"}}))
    store = JobStore(str(data / "jobs.sqlite"))
    token = new_token()
    store.add_token(store.get_or_create_user("alice"), hash_token(token))
    store.close()
    with LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        config = ServerConfig(
            data_dir=data, scheduler=cluster.scheduler_address, public_url="http://testserver",
            queues_file=str(queues), max_keep_days=10,
        )  # fmt: skip
        app = create_app(config)
        with TestClient(app) as client:
            yield client, {"Authorization": f"Bearer {token}"}, app.state.svc


def post(api, *specs):
    client, headers, _ = api
    return client.post("/api/v1/jobs", headers=headers, files={"specs": (None, json.dumps(specs))})


def test_the_api_takes_keep_days_and_shows_it(api):
    client, headers, svc = api
    r = post(api, {**SCRIPT, "keep_days": 0.5}, SCRIPT)
    assert r.status_code == 201, r.text
    short, default = r.json()["jobs"]
    assert (short["keep_days"], default["keep_days"]) == (0.5, None)
    assert client.get(f"/api/v1/jobs/{short['id']}", headers=headers).json()["keep_days"] == 0.5
    # Ended a day ago: past its own half day, within the server's 30 days.
    for j in (short, default):
        client.post(f"/api/v1/jobs/{j['id']}/cancel", headers=headers)
    with svc.store.engine.begin() as c:
        c.execute(
            jobs.update()
            .where(jobs.c.id.in_([short["id"], default["id"]]))
            .values(ended_at=time.time() - DAY)
        )
    assert svc.sweep() == 1
    assert client.get(f"/api/v1/jobs/{short['id']}", headers=headers).status_code == 404
    assert client.get(f"/api/v1/jobs/{default['id']}", headers=headers).status_code == 200
    with svc.store.engine.begin() as c:  # 11 days: over the server's maximum of 10
        c.execute(
            jobs.update().where(jobs.c.id == default["id"]).values(ended_at=time.time() - 11 * DAY)
        )
    assert svc.sweep() == 1
    with svc.store.engine.connect() as c:
        assert c.execute(sa.select(jobs.c.id).where(jobs.c.id == default["id"])).first() is None


@pytest.mark.parametrize(
    "raw, says",
    [
        ('{"script": "x", "keep_days": -1}', "keep_days must be 0 (keep the job for ever)"),
        ('{"script": "x", "keep_days": Infinity}', "keep_days must be 0"),
        ('{"script": "x", "keep_days": NaN}', "keep_days must be 0"),
        ('{"script": "x", "keep_days": "a week"}', "keep_days 'a week' is not a number of days"),
        ('{"script": "x", "keep_days": 30}', "keep_days 30 days is over this server's maximum"),
        ('{"script": "x", "keep_days": 0}', "keep_days 0 (for ever) is over this server's"),
    ],
)
def test_the_api_refuses_bad_keep_days_with_a_detail(api, raw, says):
    client, headers, _ = api
    r = client.post("/api/v1/jobs", headers=headers, files={"specs": (None, f"[{raw}]")})
    assert r.status_code == 400, r.text
    assert says in r.json()["detail"]
