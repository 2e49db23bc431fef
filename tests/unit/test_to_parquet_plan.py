"""Planning of dask_kotta.dataframe.to_parquet, its destinations and their grants: pure steps.

The files a partition's task writes are Dask's own (byte for byte, written here into a
job-like directory under scheduler='sync'); the names and URLs the scheduler declares as a
job's destinations; the policy's write grants, apart from its read grants; what a job spec
may declare. The writes through a real service and S3 server are
tests/integration/test_dask_frames_s3.py's.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import dask_kotta.dataframe as kd
from dask_kotta import KottaScheduler
from dask_kotta.dask.dataframe import destination_file, parquet_destinations
from dask_kotta.dask.graph import build, foreign_writers
from dask_kotta.errors import ConfigError, InvalidRequestError
from dask_kotta.jobspec import JobSpec
from dask_kotta.server.policy import parse_policy

pytestmark = pytest.mark.filterwarnings(
    "ignore:The inplace keyword in DataFrame:pandas.errors.Pandas4Warning"
)


def _frame(npartitions: int = 3) -> dd.DataFrame:
    rng = np.random.default_rng(1)
    pdf = pd.DataFrame(
        {"k": rng.integers(0, 5, 90), "x": rng.random(90), "w": [f"w{i % 4}" for i in range(90)]}
    )
    return dd.from_pandas(pdf, npartitions=npartitions)


@pytest.mark.parametrize(
    "options",
    [{}, {"write_index": False, "compression": "gzip", "row_group_size": 7},
     {"name_function": lambda i: f"data-{i:03d}.parquet", "custom_metadata": {b"k": b"v"}},
     {"schema": {"x": pa.float32()}, "compression": None},
     {"schema": None}],
)  # fmt: skip
def test_each_partition_s_file_is_the_one_dask_writes(tmp_path, monkeypatch, options):
    df = _frame()
    df = df[df.x > 0.2].assign(y=df.x * 2)
    dd.to_parquet(df, tmp_path / "dask", compute_kwargs={"scheduler": "sync"}, **options)
    # As in a Kotta job: the task writes into its working directory only.
    monkeypatch.setenv("KOTTA_WORKDIR", str(tmp_path / "job"))
    assert kd.to_parquet(df, "s3://bk/out", compute_kwargs={"scheduler": "sync"}, **options) is None
    names = sorted(p.name for p in (tmp_path / "dask").iterdir())
    assert len(names) == df.npartitions
    for name in names:
        mine = tmp_path / "job" / destination_file(f"s3://bk/out/{name}", name)
        assert mine.read_bytes() == (tmp_path / "dask" / name).read_bytes(), name


def test_the_scheduler_declares_one_destination_per_partition():
    df = _frame(4)
    out = kd.to_parquet(df, "s3://bk/pre/fix/", compute=False)
    graph, _ = build(out.__dask_graph__(), out.key)
    declared = sorted(p for pairs in graph.task_outputs.values() for p in pairs)
    urls = [f"s3://bk/pre/fix/part.{i}.parquet" for i in range(4)]
    assert declared == sorted((destination_file(u, u.rsplit("/", 1)[1]), u) for u in urls)
    # Each in the job's own directory, one directory per URL: no two collide in one job.
    assert len({name for name, _ in declared}) == 4
    assert all(name.startswith("kotta-outputs/") for name, _ in declared)
    assert not foreign_writers(graph.nodes)


def test_dask_s_own_writer_is_refused_on_kotta_before_any_request(tmp_path):
    df = _frame()

    class NoServer:  # any request would fail the test: none may be made
        url = "http://unused"

        def __getattr__(self, name):
            raise AssertionError(f"konn.{name} was used")

    sched = KottaScheduler(NoServer(), parallelism=2)
    with pytest.raises(kd.UnsupportedWriteError, match=r"kd.to_parquet|dataframe.to_parquet"):
        df.to_parquet("s3://bk/out/", compute_kwargs={"scheduler": sched})
    with dask.config.set(scheduler=sched), pytest.raises(NotImplementedError, match="Nothing was"):
        df.to_parquet(str(tmp_path / "local"))
    # Built without a scheduler, then computed on Kotta: the graph is refused.
    lazy = df.to_parquet(str(tmp_path / "local"), compute=False)
    with pytest.raises(kd.UnsupportedWriteError, match=str(tmp_path / "local")):
        lazy.compute(scheduler=sched)
    assert not (tmp_path / "local").exists() or not any((tmp_path / "local").iterdir())


def test_what_to_parquet_refuses_before_anything_runs():
    df = _frame()
    for kw in [{"append": True}, {"overwrite": True}, {"partition_on": ["k"]},
               {"write_metadata_file": True}, {"storage_options": {"key": "k"}},
               {"engine": "fastparquet"}]:  # fmt: skip
        with pytest.raises(NotImplementedError, match=next(iter(kw))):
            kd.to_parquet(df, "s3://bk/out/", **kw)
    with pytest.raises(ValueError, match="s3://bucket/prefix/ only"):
        kd.to_parquet(df, "/tmp/out")
    with pytest.raises(ValueError, match="without '/'"):
        parquet_destinations("s3://bk/o", 2, lambda i: f"../x{i}.parquet")
    with pytest.raises(ValueError, match="unique"):
        parquet_destinations("s3://bk/o", 2, lambda i: "same.parquet")
    with pytest.raises(ValueError, match=r"'\.' or '\.\.'"):
        parquet_destinations("s3://bk/a/../b", 1)
    assert parquet_destinations("s3://bk", 1) == [("part.0.parquet", "s3://bk/part.0.parquet")]


def test_write_grants_are_apart_from_read_grants():
    p = parse_policy(
        {"s3_grants": {"alice": ["s3://b/"], "*": ["s3://pub/"]},
         "s3_write_grants": {"alice": ["s3://b/out/"], "bob": ["s3://b/bob*"]}}
    )  # fmt: skip
    assert p.grant_for("alice", "b", "out/x") and p.write_grant_for("alice", "b", "out/x")
    assert p.write_grant_for("alice", "b", "in/x") is None  # read, not write
    assert p.write_grant_for("alice", "pub", "x") is None
    assert p.write_grant_for("bob", "b", "bobby/x") and not p.write_grant_for("bob", "b", "out/x")
    assert p.write_grant_for("alice", "b", "out/../in/x") is None
    assert p.write_grant_for("carol", "b", "out/x") is None  # another user's grant
    # A policy of the earlier format grants no write at all.
    old = parse_policy({"s3_grants": {"alice": ["s3://b/"]}})
    assert old.write_grant_for("alice", "b", "x") is None
    with pytest.raises(ConfigError, match=r"s3_write_grants\['alice'\]"):
        parse_policy({"s3_write_grants": {"alice": ["http://b/"]}})


def test_a_job_spec_s_destinations_are_checked_on_both_sides():
    base = {"jobtype": "script", "script": "true"}
    spec = JobSpec.parse({**base, "destinations": {"./a//f.parquet": "s3://b/k/f.parquet"}})
    assert spec.to_json()["destinations"] == {"a/f.parquet": "s3://b/k/f.parquet"}
    assert "destinations" not in JobSpec.parse(base).to_json()  # not stored with every job
    bad = {
        "s3://b/k/": "one object",
        "https://h/k": "only s3://",
        "s3://b/a/../k": "'..' parts",
        "s3://b/a//k": "empty",
        "s3:///k": "one object",
    }
    for url, why in bad.items():
        with pytest.raises(InvalidRequestError, match=why):
            JobSpec.parse({**base, "destinations": {"f": url}})
    for dests, why in [
        ({"../f": "s3://b/k"}, "escapes"),
        ({".kotta/f": "s3://b/k"}, "reserved"),
        ({"STDOUT.txt": "s3://b/k"}, "declare it once"),
        ({"f": "s3://b/k", "g": "s3://b/k"}, "both"),
    ]:
        with pytest.raises(InvalidRequestError, match=why):
            JobSpec.parse({**base, "destinations": dests})
    with pytest.raises(InvalidRequestError, match="declare it once"):
        JobSpec.parse({**base, "outputs": ["f"], "destinations": {"f": "s3://b/k"}})
