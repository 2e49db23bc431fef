"""The API in-process: the app factory `dask-kotta server` serves, over a temp SQLite file.

Starlette's TestClient runs the app's lifespan (the service, its store, its engine);
the engine talks to a dask scheduler in this process with no workers, so submitted
jobs stay pending unless a test plays the runner with a dispatch token it made.
"""

from __future__ import annotations

import json
import os

import pytest
from distributed import LocalCluster
from starlette.testclient import TestClient

from dask_kotta import defaults as d
from dask_kotta.server.app import create_app
from dask_kotta.server.auth import hash_token, new_token
from dask_kotta.server.service import ServerConfig
from dask_kotta.store.blobs import SMALL_MAX
from dask_kotta.store.jobs import JobStore

QUEUES = {"Test": {"vcpus": 1, "memory": "1GB", "max_walltime_min": 1440}}


@pytest.fixture(scope="module")
def scheduler():
    with LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def server(scheduler, tmp_path_factory):
    """``(client, tokens by user name, service)`` of one app for the module."""
    data = tmp_path_factory.mktemp("data")
    queues = data / "queues.json"
    queues.write_text(json.dumps(QUEUES))
    store = JobStore(str(data / "jobs.sqlite"))
    tokens = {}
    for name in ("alice", "bob"):
        tokens[name] = new_token()
        store.add_token(store.get_or_create_user(name), hash_token(tokens[name]))
    store.close()
    config = ServerConfig(
        data_dir=data, scheduler=scheduler, public_url="http://testserver",
        queues_file=str(queues), max_payload_bytes=4096,
    )  # fmt: skip
    app = create_app(config)
    with TestClient(app) as client:
        yield client, tokens, app.state.svc


@pytest.fixture(scope="module")
def client(server):
    return server[0]


def auth(server, user="alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {server[1][user]}"}


def submit(client, headers, *specs, payloads=None, expect=201) -> dict:
    files = {"specs": (None, json.dumps(list(specs)))}
    for i, p in (payloads or {}).items():
        files[f"payload{i}"] = ("payload.pkl", p)
    r = client.post("/api/v1/jobs", headers=headers, files=files)
    assert r.status_code == expect, r.text
    return r.json()


def script_job(server, user="alice", **spec) -> str:
    body = submit(server[0], auth(server, user), {"script": "echo hi", "walltime_min": 1, **spec})
    return body["jobs"][0]["id"]


def detail(r, status) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


def test_health_needs_no_token(client):
    assert client.get("/api/v1/health").json() == {"ok": True}


USER_ROUTES = [
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/queues"),
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/0123456789abcdef"),
    ("GET", "/api/v1/jobs/0123456789abcdef/events"),
    ("GET", "/api/v1/jobs/0123456789abcdef/result"),
    ("GET", "/api/v1/jobs/0123456789abcdef/files/a.txt"),
    ("POST", "/api/v1/jobs/0123456789abcdef/cancel"),
    ("POST", "/api/v1/jobs/wait"),
    ("POST", "/api/v1/uploads"),
    ("GET", "/api/v1/objects?url=s3://b/k"),
]


@pytest.mark.parametrize("method, path", USER_ROUTES)
@pytest.mark.parametrize(
    "header, fragment",
    [
        (None, "missing or malformed"),
        ("Basic dXNlcjpwdw==", "missing or malformed"),
        ("Bearer ", "missing or malformed"),
        ("Bearer kt_not-a-token", "unknown token"),
    ],
)
def test_user_routes_are_401_without_a_valid_token(client, method, path, header, fragment):
    headers = {"Authorization": header} if header is not None else {}
    assert fragment in detail(client.request(method, path, headers=headers), 401)


def test_a_token_names_its_user(server, client):
    assert client.get("/api/v1/whoami", headers=auth(server, "bob")).json()["name"] == "bob"


def test_submit_makes_a_pending_job_its_owner_can_read(server, client):
    jid = script_job(server, name="mine")
    job = client.get(f"/api/v1/jobs/{jid}", headers=auth(server)).json()
    assert (job["id"], job["status"], job["name"], job["queue"]) == (jid, d.PENDING, "mine", "Test")
    assert jid in {j["id"] for j in client.get("/api/v1/jobs", headers=auth(server)).json()["jobs"]}
    events = client.get(f"/api/v1/jobs/{jid}/events", headers=auth(server)).json()["events"]
    assert [e["status"] for e in events] == [d.PENDING]


def test_another_users_job_is_404_like_a_missing_one(server, client):
    jid = script_job(server, "alice")
    bob = auth(server, "bob")
    for method, path in [
        ("GET", f"/api/v1/jobs/{jid}"),
        ("GET", f"/api/v1/jobs/{jid}?wait=0.1"),
        ("GET", f"/api/v1/jobs/{jid}/events"),
        ("GET", f"/api/v1/jobs/{jid}/result"),
        ("GET", f"/api/v1/jobs/{jid}/files/STDOUT.txt"),
        ("POST", f"/api/v1/jobs/{jid}/cancel"),
    ]:
        theirs = detail(client.request(method, path, headers=bob), 404)
        missing = path.replace(jid, "0000000000000000")
        nobody = detail(client.request(method, missing, headers=bob), 404)
        assert theirs.replace(jid, "X") == nobody.replace("0000000000000000", "X"), path
    r = client.post("/api/v1/jobs/wait", headers=bob, json={"ids": [jid], "timeout": 0})
    assert jid in detail(r, 404)
    assert jid not in {j["id"] for j in client.get("/api/v1/jobs", headers=bob).json()["jobs"]}
    assert client.get(f"/api/v1/jobs/{jid}", headers=auth(server)).json()["status"] == d.PENDING


def test_cancel_a_pending_job_once(server, client):
    jid = script_job(server)
    r = client.post(f"/api/v1/jobs/{jid}/cancel", headers=auth(server))
    assert r.status_code == 200 and r.json()["status"] == d.CANCELLED
    again = client.post(f"/api/v1/jobs/{jid}/cancel", headers=auth(server))
    assert "already ended as cancelled" in detail(again, 409)


def test_an_ended_job_is_deleted_with_its_history_and_files(server, client):
    svc = server[2]
    jid = script_job(server)
    job = svc.store.get(jid)
    key = f"u{job['owner']}/{jid}/STDOUT.txt"
    svc.objects.put_bytes(key, b"hi\n")  # as a runner's log, uploaded at the job's end
    # Small: a row of the database; large: a file of the object store.
    assert svc.objects.local_path(key) is None and svc.objects.get_bytes(key) == b"hi\n"
    big = os.urandom(SMALL_MAX + 1)
    svc.objects.put_bytes(f"u{job['owner']}/{jid}/big.bin", big)
    payload = svc.objects.local_path(f"u{job['owner']}/{jid}/big.bin")
    assert payload is not None and payload.read_bytes() == big
    running = client.delete(f"/api/v1/jobs/{jid}", headers=auth(server))
    assert "only an ended job can be deleted (cancel it first)" in detail(running, 409)
    assert svc.store.get(jid) is not None and payload.exists()  # nothing lost
    assert svc.objects.get_bytes(key) == b"hi\n"
    client.post(f"/api/v1/jobs/{jid}/cancel", headers=auth(server))
    # Another user's job is not theirs to delete: a 404, as for a job that is not there.
    assert "no job" in detail(
        client.delete(f"/api/v1/jobs/{jid}", headers=auth(server, "bob")), 404
    )
    r = client.delete(f"/api/v1/jobs/{jid}", headers=auth(server))
    assert r.status_code == 204, r.text
    assert svc.store.get(jid) is None and svc.store.events(jid) == []
    assert not payload.exists() and not payload.parent.exists()
    assert svc.objects.size(key) is None and svc.objects.blobs.listing(f"u{job['owner']}") == []
    assert "no job" in detail(client.get(f"/api/v1/jobs/{jid}", headers=auth(server)), 404)
    assert "no job" in detail(client.delete(f"/api/v1/jobs/{jid}", headers=auth(server)), 404)


def test_jobs_past_their_keep_time_are_swept_and_no_other(server, client):
    import time

    import sqlalchemy as sa

    from dask_kotta.store.schema import jobs

    svc = server[2]
    old, recent, live = script_job(server), script_job(server, "bob"), script_job(server)
    for jid in (old, recent):
        client.post(
            f"/api/v1/jobs/{jid}/cancel", headers=auth(server, "bob" if jid == recent else "alice")
        )
    days_ago = time.time() - (svc.config.keep_days + 1) * 86400
    with svc.store.engine.begin() as c:  # `old` ended a day before the keep time began
        c.execute(jobs.update().where(jobs.c.id == old).values(ended_at=days_ago))
        # `live` is pending, however old: never swept
        c.execute(jobs.update().where(jobs.c.id == live).values(submitted_at=days_ago))
    keep = svc.config.keep_days
    try:
        svc.config.keep_days = 0  # `--keep 0`: every job is kept
        assert svc.sweep() == 0 and svc.store.get(old) is not None
    finally:
        svc.config.keep_days = keep
    assert svc.sweep() >= 1
    assert svc.store.get(old) is None
    assert svc.store.get(recent) is not None and svc.store.get(live) is not None
    with svc.store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).where(jobs.c.id == old)).scalar() == 0


@pytest.mark.parametrize(
    "files, status, fragment",
    [
        ({}, 422, "missing form field 'specs'"),
        ({"specs": (None, "[{")}, 422, "'specs' is not valid JSON"),
        ({"specs": (None, "[]")}, 422, "must be a non-empty JSON list"),
        ({"specs": (None, '{"script": "x"}')}, 422, "must be a non-empty JSON list"),
        ({"specs": (None, '[{"script": "x", "colour": 1}]')}, 400, "unknown job fields: colour"),
        ({"specs": (None, '[{"script": "x", "queue": "Gold"}]')}, 400, "unknown queue 'Gold'"),
        ({"specs": (None, '[{"script": "x"}, {"outputs": ["../x"], "script": "x"}]')}, 400,
         "job 1: output '../x' escapes"),
        ({"specs": (None, '[{"jobtype": "python"}]')}, 400, "needs a payload"),
        ({"specs": (None, '[{"jobtype": "python", "walltime_min": 1}]'),
          "payload0": ("p.pkl", b"x" * 5000)}, 413, "over the limit of 4096"),
        ({"specs": (None, '[{"script": "x", "inputs": ["https://127.0.0.1/a"]}]')}, 400,
         "is refused: its host 127.0.0.1 is a loopback address"),
    ],
)  # fmt: skip
def test_bad_submissions_are_4xx_with_a_json_detail(server, client, files, status, fragment):
    before = len(client.get("/api/v1/jobs?limit=10000", headers=auth(server)).json()["jobs"])
    r = client.post("/api/v1/jobs", headers=auth(server), files=files)
    assert fragment in detail(r, status)
    after = len(client.get("/api/v1/jobs?limit=10000", headers=auth(server)).json()["jobs"])
    assert after == before, "a refused submission made no job"


@pytest.mark.parametrize(
    "method, path, body, status, fragment",
    [
        ("GET", "/api/v1/jobs?limit=0", None, 422, "limit"),
        ("GET", "/api/v1/jobs/0123456789abcdef?wait=-1", None, 422, "wait"),
        ("POST", "/api/v1/jobs/wait", {"ids": []}, 422, "ids"),
        ("POST", "/api/v1/jobs/wait", {"timeout": 1}, 422, "ids"),
        ("GET", "/api/v1/jobs/0123456789abcdef/files/..%2Fx", None, 404, "no job"),
    ],
)
def test_bad_requests_are_4xx_with_a_json_detail(
    server, client, method, path, body, status, fragment
):
    r = client.request(method, path, headers=auth(server), json=body)
    assert fragment in detail(r, status)


def test_an_unsafe_output_name_is_400(server, client):
    jid = script_job(server)
    r = client.get(f"/api/v1/jobs/{jid}/files/a%5Cb", headers=auth(server))
    assert "backslash" in detail(r, 400)


def test_an_idempotency_key_makes_one_job(server, client):
    spec = {"script": "echo", "walltime_min": 1, "idempotency_key": "unit-key"}
    first = submit(client, auth(server), spec)
    again = submit(client, auth(server), spec)
    assert first["created"] == [True] and again["created"] == [False]
    assert first["jobs"][0]["id"] == again["jobs"][0]["id"]
    other = submit(client, auth(server, "bob"), spec)
    assert other["created"] == [True] and other["jobs"][0]["id"] != first["jobs"][0]["id"]


def runner(token: str, attempt: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Kotta-Attempt": str(attempt)}


def test_the_runner_api_takes_the_attempts_dispatch_token_only(server, client):
    """A held job: its attempt's token works, and the owner's own token is refused."""
    s = server[2]
    jid = script_job(server)
    dispatch = new_token()
    attempt = s.store.dispatch(jid, hash_token(dispatch))
    base = f"/api/v1/runner/jobs/{jid}"
    claim = client.post(f"{base}/claim", headers=runner(dispatch, attempt))
    assert claim.status_code == 200, claim.text
    user_token = server[1]["alice"]
    for path, body, fragment in [
        ("heartbeat", None, "no longer holds"),
        ("phase", {"status": d.PROCESSING}, "cannot move to 'processing'"),
        ("finish", {"ok": True}, "no longer holds"),
    ]:
        r = client.post(f"{base}/{path}", headers=runner(user_token, attempt), json=body)
        assert fragment in detail(r, 409), path
    r = client.put(f"{base}/files/x.txt", headers=runner(user_token, attempt), content=b"x")
    assert "no longer holds" in detail(r, 409)
    assert "missing dispatch token" in detail(
        client.post(f"{base}/heartbeat", headers={"X-Kotta-Attempt": str(attempt)}), 401
    )
    assert client.get(f"/api/v1/jobs/{jid}", headers=auth(server)).json()["status"] == (
        d.STAGING_INPUTS
    )
    # The same calls with the attempt's token go through, to the end.
    assert client.post(f"{base}/heartbeat", headers=runner(dispatch, attempt)).status_code == 200
    r = client.post(
        f"{base}/phase", headers=runner(dispatch, attempt), json={"status": "processing"}
    )
    assert r.status_code == 200, r.text
    r = client.put(f"{base}/files/out.txt", headers=runner(dispatch, attempt), content=b"done\n")
    assert r.json() == {"name": "out.txt", "size": 5}
    outputs = [{"name": "out.txt", "size": 5}]
    r = client.post(
        f"{base}/finish", headers=runner(dispatch, attempt), json={"ok": True, "outputs": outputs}
    )
    assert r.json() == {"status": d.COMPLETED}
    got = client.get(f"/api/v1/jobs/{jid}/files/out.txt", headers=auth(server))
    assert got.status_code == 200 and got.content == b"done\n"
    assert (
        client.get(f"/api/v1/jobs/{jid}/files/out.txt", headers=auth(server, "bob")).status_code
        == 404
    )
    late = client.post(f"{base}/heartbeat", headers=runner(dispatch, attempt))
    assert "no longer holds" in detail(late, 409)


def test_the_index_page_holds_no_data(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")


def test_the_page_and_its_files_forbid_any_other_script(client):
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"),
                       ("/static/style.css", "text/css")):  # fmt: skip
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
        assert "script-src 'self'" in r.headers["content-security-policy"], path
        assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert "<script>" not in client.get("/").text, "no inline script: the policy would block it"
    for name in ("index.html", "nope.js", "..%2Fviews.py"):
        detail(client.get(f"/static/{name}"), 404)  # only the page's own files are served


def test_info_names_the_dashboard_the_operator_gave(server):
    client, _, svc = server
    assert client.get("/api/v1/info").status_code == 401
    assert client.get("/api/v1/info", headers=auth(server)).json()["dashboard"] is None
    svc.config.dashboard_url = "https://dask.example/status"
    try:
        info = client.get("/api/v1/info", headers=auth(server)).json()
    finally:
        svc.config.dashboard_url = None
    assert info["dashboard"] == "https://dask.example/status" and info["version"]


def test_a_dashboard_url_must_be_a_web_address():
    from click.testing import CliRunner

    from dask_kotta.cli import main

    r = CliRunner().invoke(
        main, ["server", "--scheduler", "tcp://x:1", "--dashboard-url", "javascript:alert(1)"]
    )
    assert r.exit_code == 2 and "--dashboard-url" in r.output and "http" in r.output


def test_a_destination_is_planned_only_declared_and_granted_by_the_policy_in_force(
    server, client, monkeypatch
):
    """Write grants apart from read grants, per user; the runner's plan is one PUT of one key
    and size, refused for an undeclared name and once the policy no longer grants it."""
    from urllib.parse import parse_qs, urlparse

    from dask_kotta.server.policy import parse_policy

    s = server[2]
    # Presigning is local (no request): any credentials and endpoint will do.
    for k, v in {"AWS_ACCESS_KEY_ID": "AKTEST", "AWS_SECRET_ACCESS_KEY": "secret",
                 "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    grants = {"s3_grants": {"alice": ["s3://bk/"]}, "s3_write_grants": {"alice": ["s3://bk/out/"]}}
    monkeypatch.setattr(s, "policy", parse_policy(grants))
    check = "/api/v1/destinations/check"
    ok = client.post(check, headers=auth(server), json={"urls": ["s3://bk/out/a.parquet"]})
    assert ok.status_code == 200 and ok.json() == {"urls": ["s3://bk/out/a.parquet"]}
    why = detail(client.post(check, headers=auth(server), json={"urls": ["s3://bk/in/a"]}), 403)
    assert "s3://bk/in/a" in why and "read grant" in why and "s3_write_grants" in why
    bob = client.post(check, headers=auth(server, "bob"), json={"urls": ["s3://bk/out/a"]})
    assert "for user 'bob'" in detail(bob, 403)
    assert "'..'" in detail(
        client.post(check, headers=auth(server), json={"urls": ["s3://bk/out/../x"]}), 400
    )
    assert "for user 'bob'" in detail(client.post("/api/v1/jobs", headers=auth(server, "bob"), files={
        "specs": (None, json.dumps([{"script": "true", "destinations": {"f": "s3://bk/out/f"}}]))}), 403)  # fmt: skip

    jid = script_job(server, destinations={"f.parquet": "s3://bk/out/f.parquet"})
    dispatch = new_token()
    attempt = s.store.dispatch(jid, hash_token(dispatch))
    base = f"/api/v1/runner/jobs/{jid}"
    claim = client.post(f"{base}/claim", headers=runner(dispatch, attempt)).json()
    assert claim["destinations"] == {"f.parquet": "s3://bk/out/f.parquet"}

    def plans(*files, token=dispatch):
        body = {"files": [{"name": n, "size": size} for n, size in files]}
        return client.post(f"{base}/destinations", headers=runner(token, attempt), json=body)

    r = plans(("f.parquet", 10))
    assert r.status_code == 200, r.text
    (plan,) = r.json()["plans"]
    url = urlparse(plan["url"])
    assert plan["mode"] == "put" and url.path == "/bk/out/f.parquet"
    assert parse_qs(url.query)["X-Amz-SignedHeaders"] == ["content-length;host"]  # its size only
    assert "secret" not in plan["url"]
    assert "not a declared destination" in detail(plans(("g.parquet", 1)), 403)
    assert "not a declared destination" in detail(plans(("f.parquet", 1), ("x", 1)), 403)
    assert plans(("f.parquet", 1), token=server[1]["alice"]).status_code == 409  # a user's token
    assert "5368709120 bytes" in detail(plans(("f.parquet", 5 * 1024**3 + 1)), 413)
    # The grant is checked again as the job ends, by the policy in force.
    monkeypatch.setattr(s, "policy", parse_policy({"s3_grants": grants["s3_grants"]}))
    why = detail(plans(("f.parquet", 10)), 403)
    assert "read grant" in why and "checked again" in why
    end = client.post(f"{base}/finish", headers=runner(dispatch, attempt), json={"ok": False})
    assert end.status_code == 200, end.text
