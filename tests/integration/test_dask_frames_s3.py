"""dask_kotta.dataframe and kb.read_bytes over a real S3 server (SeaweedFS), staged on workers.

As in test_dask_bag_s3.py this module starts its own `dask-kotta up` (1 worker) with the
S3 server's environment and a policy granting its user the bucket: the server presigns
each object for the runner. Each result is compared with Dask's own reader run on local
copies of the same files under scheduler='sync'.

kd.to_parquet writes back through the jobs' destinations: the policy grants the user
writing under out/ only (reading the whole bucket), and a second user, mallory, writing
under mallory/. The files in the bucket are compared with Dask's own to_parquet's, byte for
byte, and the grants are tried as a user with a normal account would try them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import boto3
import cloudpickle
import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import requests
from dask.dataframe.utils import assert_eq
from kotta_testing import Service, policy_args
from s3server import apply_env, restore_env

import dask_kotta.bag as kb
import dask_kotta.dataframe as kd
from dask_kotta import KottaScheduler
from dask_kotta.errors import ForbiddenError, InvalidRequestError, KottaError
from dask_kotta.jobspec import JobSpec

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Dask's Parquet reader (theirs and, under 'sync', ours, which runs it) calls
# reset_index(inplace=True), and its writer set_index(inplace=True), which pandas 3.1
# deprecates; jobs see it too, harmlessly.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The inplace keyword in DataFrame:pandas.errors.Pandas4Warning"
)

BUCKET = "kotta-frames"
N_PARQUET = 6
N_CSV = 3
ROWS = 5_000  # a Parquet file's


def _frame(i: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(i)
    return pd.DataFrame(
        {
            "key": rng.integers(0, 7, n),
            "x": rng.random(n),
            "word": [f"w{(i * 31 + j) % 13}" for j in range(n)],
        }
    )


@pytest.fixture(scope="module")
def data(s3_server, tmp_path_factory):
    """The same Parquet and CSV files on local disk (for Dask's readers) and in the bucket."""
    local = tmp_path_factory.mktemp("frames")
    old = apply_env(s3_server.env)
    boto3.setup_default_session()
    s3_server.make_bucket(BUCKET)
    c = s3_server.client()
    for sub in ("pq", "csv"):
        (local / sub).mkdir()
    for i in range(N_PARQUET):
        path = local / "pq" / f"part-{i:02d}.parquet"
        # 4 row groups a file, ~50 kB: far more than a footer and the 16 kB read for one
        _frame(i, ROWS).to_parquet(path, row_group_size=ROWS // 4, index=False)
        c.upload_file(str(path), BUCKET, f"pq/part-{i:02d}.parquet")
    c.put_object(Bucket=BUCKET, Key="pq/_SUCCESS", Body=b"not data\n")
    for i in range(N_CSV):
        path = local / "csv" / f"part-{i}.csv"
        _frame(100 + i).to_csv(path, index=False)  # ~6 kB a file
        c.upload_file(str(path), BUCKET, f"csv/part-{i}.csv")
    yield local
    restore_env(old)


@pytest.fixture(scope="module")
def frames_service(s3_server, data, tmp_path_factory):
    base = tmp_path_factory.mktemp("frames-service")
    grants = policy_args(
        base,
        s3_grants={"tester": [f"s3://{BUCKET}/"]},
        s3_write_grants={"tester": [f"s3://{BUCKET}/out/"], "mallory": [f"s3://{BUCKET}/mallory/"]},
    )
    svc = Service(base, workers=1, env=s3_server.env, extra=grants).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def s3konn(frames_service):
    return frames_service.konn()


@pytest.fixture
def client_gets(monkeypatch):
    """Bytes of each GetObject answer this (client) process receives, through any boto3 client.

    dask-kotta makes a boto3 session per client (s3client.py), so the hook goes on each
    client as it is made; nothing else about boto3 changes.
    """
    got: list[int] = []
    make = boto3.session.Session.client

    def count(http_response=None, parsed=None, **kw):
        got.append(int(parsed.get("ContentLength") or 0) if parsed else 0)

    def client(self, *args, **kwargs):
        c = make(self, *args, **kwargs)
        c.meta.events.register("after-call.s3.GetObject", count)
        return c

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return got


def _staged(konn, run) -> set[str]:
    return {u for j in run.job_ids for u in konn.job(j)["inputs"]}


def test_parquet_on_kotta_is_dask_s_frame_and_the_client_reads_footers_only(
    s3konn, data: Path, client_gets
):
    df = kd.read_parquet(f"s3://{BUCKET}/pq/", split_row_groups=2)
    # Planning read each footer (ranged GETs of the files' ends), never the data.
    assert len(client_gets) == N_PARQUET
    footer_bytes = sum(client_gets)
    file_bytes = sum(p.stat().st_size for p in (data / "pq").glob("*.parquet"))
    assert footer_bytes <= N_PARQUET * 16 * 1024 < file_bytes / 2
    assert df.npartitions == N_PARQUET * 2  # 4 row groups a file, 2 a partition

    # Columns and row filters too; everything in one compute (one round of jobs).
    cols = kd.read_parquet(
        f"s3://{BUCKET}/pq/*.parquet", columns=["key", "x"], filters=[("key", ">=", 5)]
    )
    assert list(cols.columns) == ["key", "x"]
    mine = {
        "agg": df.groupby("word").agg({"x": "sum", "key": "count"}),
        "proj": df[df.x > 0.999][["x", "word"]],
        "len": df.x.size,
        "cols": cols,
    }
    theirs = dd.read_parquet(str(data / "pq"), split_row_groups=2)
    want = {
        "agg": theirs.groupby("word").agg({"x": "sum", "key": "count"}),
        "proj": theirs[theirs.x > 0.999][["x", "word"]],
        "len": theirs.x.size,
        "cols": dd.read_parquet(str(data / "pq"), columns=["key", "x"], filters=[("key", ">=", 5)]),
    }
    sched = KottaScheduler(s3konn)
    client_gets.clear()
    (got,) = dask.compute(mine, scheduler=sched)
    # Workers staged every file; the client downloaded none of them.
    assert client_gets == []
    run = sched.last_run
    assert _staged(s3konn, run) == {
        f"s3://{BUCKET}/pq/part-{i:02d}.parquet" for i in range(N_PARQUET)
    }
    assert run.downloaded_bytes < 1.5 * len(cloudpickle.dumps(got))  # the answers only
    (expected,) = dask.compute(want, scheduler="sync")
    assert_eq(got["agg"], expected["agg"])
    assert_eq(got["proj"], expected["proj"])
    assert got["len"] == expected["len"] == N_PARQUET * ROWS
    # Dask drops row groups by their statistics first, so compare rows, not partitions.
    assert_eq(got["cols"].reset_index(drop=True), expected["cols"].reset_index(drop=True))
    assert_eq(got["cols"], cols.compute(scheduler="sync"))  # the same partitions off Kotta
    assert (got["cols"].key >= 5).all() and len(got["cols"]) > 0


def test_csv_by_byte_ranges_and_read_bytes_on_kotta(s3konn, data: Path, client_gets):
    df = kd.read_csv(f"s3://{BUCKET}/csv/*.csv", blocksize=1500)
    theirs = dd.read_csv(str(data / "csv" / "*.csv"), blocksize=1500)
    assert df.npartitions == theirs.npartitions > N_CSV  # several ranges a file
    assert sum(client_gets) <= 256000  # a sample of the first file, nothing else
    # read_bytes: blocks end on the delimiter and add up to each object.
    sample, blocks = kb.read_bytes(f"s3://{BUCKET}/csv/*.csv", delimiter=b"\n", blocksize=1000)
    assert sample.startswith(b"key,x,word\n") and sample.endswith(b"\n")
    assert [len(b) for b in blocks] == [len(b) for b in dask.bytes.read_bytes(
        str(data / "csv" / "*.csv"), delimiter=b"\n", blocksize=1000)[1]]  # fmt: skip

    sched = KottaScheduler(s3konn)
    got, sizes = dask.compute(df.groupby("key").x.mean(), df.map_partitions(len), scheduler=sched)
    assert_eq(got, theirs.groupby("key").x.mean().compute(scheduler="sync"))
    # Partition by partition, ranges split on the same lines as Dask's.
    assert list(sizes) == list(theirs.map_partitions(len).compute(scheduler="sync"))
    csvs = {f"s3://{BUCKET}/csv/part-{i}.csv" for i in range(N_CSV)}
    assert _staged(s3konn, sched.last_run) == csvs
    (got_blocks,) = dask.compute(blocks, scheduler=sched)  # delayed: not with dataframes
    assert _staged(s3konn, sched.last_run) == csvs
    for i, file_blocks in enumerate(got_blocks):
        assert all(b.endswith(b"\n") for b in file_blocks)
        assert b"".join(file_blocks) == (data / "csv" / f"part-{i}.csv").read_bytes()

    # Off Kotta a task downloads (and caches) the object: a rewritten one is read anew.
    c = boto3.client("s3")
    for body in (b"a,b\n1,2\n", b"a,b\n3,4\n5,6\n"):
        c.put_object(Bucket=BUCKET, Key="rewritten/r.csv", Body=body)
        again = kd.read_csv(f"s3://{BUCKET}/rewritten/r.csv").compute(scheduler="sync")
        assert again.to_csv(index=False).encode() == body


def test_bad_paths_columns_and_filters_fail_on_the_client(s3konn, data):
    counts = s3konn.job_counts()
    with pytest.raises(kd.NoFilesError, match="nothing"):
        kd.read_parquet(f"s3://{BUCKET}/nothing/*.parquet")
    with pytest.raises(kd.NoFilesError, match="no such key"):
        kd.read_csv(f"s3://{BUCKET}/csv/missing.csv")
    with pytest.raises(kd.ColumnNotFoundError, match="'nope'.*it has key, x, word"):
        kd.read_parquet(f"s3://{BUCKET}/pq/", columns=["x", "nope"])
    with pytest.raises(KeyError, match="filters name.*'nope'"):
        kd.read_parquet(f"s3://{BUCKET}/pq/", filters=[("nope", "==", 1)])
    with pytest.raises(ValueError, match="not a valid operator"):
        kd.read_parquet(f"s3://{BUCKET}/pq/", filters=[("x", "~", 1)])
    with pytest.raises(ValueError, match="not a Parquet file"):
        kd.read_parquet(f"s3://{BUCKET}/csv/part-0.csv")
    with pytest.raises(TypeError, match="does not support calculate_divisions"):
        kd.read_parquet(f"s3://{BUCKET}/pq/", calculate_divisions=True)
    # Each is also the library's own error, and none of them submitted a job.
    with pytest.raises(KottaError):
        kd.read_parquet(f"s3://{BUCKET}/pq/", columns=["nope"])
    assert s3konn.job_counts() == counts


# -- to_parquet through the jobs' destinations ---------------------------------------------------


def _keys(prefix: str) -> dict[str, bytes]:
    c = boto3.client("s3")
    found = c.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: c.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in found}


def test_to_parquet_on_kotta_writes_dask_s_files_and_nothing_else(
    s3konn, frames_service, data: Path, tmp_path, client_gets
):
    c = boto3.client("s3")
    # What the bucket held before: outside the dataset, and one of its own names unused.
    c.put_object(Bucket=BUCKET, Key="out/t1/keep.txt", Body=b"mine")
    c.put_object(Bucket=BUCKET, Key="out/t1/part.99.parquet", Body=b"older")
    before = _keys("")

    df = kd.read_parquet(f"s3://{BUCKET}/pq/", split_row_groups=2)
    theirs = dd.read_parquet(str(data / "pq"), split_row_groups=2)
    mine = {
        "t1": df[df.x > 0.5].assign(y=df.x * 2),
        "t2": df[["key", "word"]],
    }
    want = {"t1": theirs[theirs.x > 0.5].assign(y=theirs.x * 2), "t2": theirs[["key", "word"]]}
    names = {"t1": None, "t2": lambda i: f"data-{i:03d}.parquet"}
    options = {"t1": {}, "t2": {"write_index": False, "row_group_size": 500}}
    sched = KottaScheduler(s3konn)
    writes = [
        kd.to_parquet(mine[t], f"s3://{BUCKET}/out/{t}/", compute=False,
                      name_function=names[t], **options[t])
        for t in mine
    ]  # fmt: skip
    written: set[str] = set()
    client_gets.clear()
    assert dask.compute(writes, scheduler=sched) == ([None, None],)
    assert client_gets == []  # nothing came back through the client
    # No job kept a copy in the service's store: the files went to the bucket only.
    for job_id in sched.last_run.job_ids:
        assert not any(n.startswith("kotta-outputs/") for n in frames_service.stored(job_id))
    for t in mine:
        local = tmp_path / t
        dd.to_parquet(want[t], local, name_function=names[t], compute_kwargs={"scheduler": "sync"},
                      **options[t])  # fmt: skip
        got = _keys(f"out/{t}/")
        expected = {f"out/{t}/{p.name}": p.read_bytes() for p in local.iterdir()}
        written |= set(expected)
        if t == "t1":  # what was there stays, untouched
            expected.update({"out/t1/keep.txt": b"mine", "out/t1/part.99.parquet": b"older"})
        assert got.keys() == expected.keys()
        for key, body in expected.items():
            assert got[key] == body, key  # Dask's own files, byte for byte
        (tmp_path / f"{t}-back").mkdir()
        for key in expected:
            if key.endswith(".parquet") and "part.99" not in key:
                (tmp_path / f"{t}-back" / key.rsplit("/", 1)[1]).write_bytes(got[key])
        back = pd.read_parquet(tmp_path / f"{t}-back")
        assert_eq(back, pd.read_parquet(local))
        assert len(back) == len(want[t].compute(scheduler="sync"))
    # Only the partitions' keys are new, and everything the bucket held is as it was.
    after = _keys("")
    assert set(after) - set(before) == written
    assert {k: after[k] for k in before} == before

    # Dask's own writer under KottaScheduler is refused, naming ours, before any job.
    counts = s3konn.job_counts()
    with pytest.raises(kd.UnsupportedWriteError, match="dask_kotta.dataframe.to_parquet"):
        df.to_parquet(f"s3://{BUCKET}/out/t3/", compute_kwargs={"scheduler": sched})
    lazy = df.to_parquet(str(tmp_path / "t3"), compute=False)
    with pytest.raises(kd.UnsupportedWriteError):
        lazy.compute(scheduler=sched)
    assert s3konn.job_counts() == counts


def _ended(konn, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = konn.job(job_id, wait=10)
        if rec["status"] in ("completed", "failed", "cancelled"):
            return rec
    raise AssertionError(f"job {job_id} did not end")


def _script(konn, script: str, destinations: dict[str, str]) -> str:
    spec = JobSpec.parse({"jobtype": "script", "script": script, "walltime_min": 1,
                          "destinations": destinations})  # fmt: skip
    return konn.submit_specs([spec], [None])[0]["id"]


def test_writes_need_the_user_s_own_write_grant_and_reach_only_declared_keys(
    s3konn, frames_service, tmp_path
):
    df = kd.read_parquet(f"s3://{BUCKET}/pq/")
    sched = KottaScheduler(s3konn)
    counts = s3konn.job_counts()
    # Read-granted, not write-granted: refused before any job, naming the place and grant.
    with pytest.raises(
        ForbiddenError, match=r"(?s)pq/part\.0\.parquet.*read grant.*s3_write_grants"
    ):
        kd.to_parquet(df, f"s3://{BUCKET}/pq/", compute_kwargs={"scheduler": sched})
    # Another user's grant does not help.
    with pytest.raises(ForbiddenError, match="no write grant covers it for user 'tester'"):
        kd.to_parquet(df, f"s3://{BUCKET}/mallory/", compute_kwargs={"scheduler": sched})
    assert s3konn.job_counts() == counts

    mallory = frames_service.konn(frames_service.token("mallory", tmp_path / "mallory.auth"))
    for konn, url, who in [(mallory, f"s3://{BUCKET}/out/m.txt", "mallory"),
                           (s3konn, f"s3://{BUCKET}/mallory/t.txt", "tester"),
                           (s3konn, f"s3://{BUCKET}/outside.txt", "tester"),
                           (s3konn, "s3://another-bucket/out/x", "tester")]:  # fmt: skip
        with pytest.raises(ForbiddenError, match=f"for user '{who}'") as e:
            _script(konn, "echo hi > f", {"f": url})
        assert e.value.status == 403 and url in e.value.detail
    # A key that would climb out of the granted prefix, sent raw (no client-side check).
    for url in [f"s3://{BUCKET}/out/../pq/part-00.parquet", f"s3://{BUCKET}/out//x"]:
        with pytest.raises(InvalidRequestError, match="parts"):
            s3konn.submit_specs(
                [{"jobtype": "script", "script": "true", "destinations": {"f": url}}], [None]
            )
    # Whose grant a job has is the server's to record, not the user's to claim.
    raw = {"jobtype": "script", "script": "true", "granted_destinations": "tester",
           "destinations": {"f": f"s3://{BUCKET}/out/f"}}  # fmt: skip
    with pytest.raises(InvalidRequestError, match="unknown job fields: granted_destinations"):
        mallory.submit_specs([raw], [None])
    # mallory may write under her own grant.
    ok = _script(mallory, "echo mallory > m.txt", {"m.txt": f"s3://{BUCKET}/mallory/m.txt"})
    assert _ended(mallory, ok)["status"] == "completed"
    assert _keys("mallory/") == {"mallory/m.txt": b"mallory\n"}

    # A job writes its declared keys only, with no credentials of its own, and only if it
    # succeeded and every declared file is its own, in its directory.
    before = _keys("")
    cases = {
        # what the script does: (declared {file: key}, status, reason part)
        "env | grep -c ^AWS_ || true; echo a > a.txt; echo b > b.txt; mkdir -p d; echo c > d/c":
            ({"a.txt": "out/atk/a.txt"}, "completed", None),
        "echo a > a.txt; exit 3": ({"a.txt": "out/atk/fail.txt"}, "failed", "exited with code 3"),
        "echo a > a.txt": ({"a.txt": "out/atk/a2.txt", "gone.txt": "out/atk/gone.txt"}, "failed",
                           "'gone.txt' was not produced"),
        "ln -s /etc/passwd p.txt": ({"p.txt": "out/atk/passwd"}, "failed", "outside"),
        "echo x > x; ln x h.txt": ({"h.txt": "out/atk/h"}, "failed", "hard link"),
    }  # fmt: skip
    ids = {
        _script(s3konn, script, {f: f"s3://{BUCKET}/{k}" for f, k in case[0].items()}): case
        for script, case in cases.items()
    }
    for job_id, (_, status, why) in ids.items():
        rec = _ended(s3konn, job_id)
        assert rec["status"] == status, rec
        if why:
            assert why in rec["reason"], rec["reason"]
    first = next(iter(ids))
    assert s3konn.job(first)["destinations"] == {"a.txt": f"s3://{BUCKET}/out/atk/a.txt"}
    # The job saw no AWS_* variable: the worker's credentials never reached it.
    out = s3konn.request("GET", f"/api/v1/jobs/{first}/files/STDOUT.txt")
    assert out.text.strip() == "0", out.text
    after = _keys("")
    assert {k: v for k, v in after.items() if k not in before} == {"out/atk/a.txt": b"a\n"}
    assert {k: after[k] for k in before} == before  # nothing else changed
    # The runner's route is the runner's: a user's token gets no upload plan.
    r = requests.post(
        f"{s3konn.url}/api/v1/runner/jobs/{first}/destinations",
        json={"files": [{"name": "a.txt", "size": 2}]},
        headers={"Authorization": s3konn.session.headers["Authorization"], "X-Kotta-Attempt": "1"},
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 409 and "url" not in r.json(), r.text  # no attempt holds it so
