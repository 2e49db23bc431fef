"""dask_kotta.bag over a real S3 server (SeaweedFS): partitions staged on workers, not the client.

This module starts its own `dask-kotta up` with the S3 server's environment
and a policy granting its user the bucket: the server presigns each object
for the runner, which holds no S3 credentials of its own for it.
"""

from __future__ import annotations

import collections
import sys

import boto3
import cloudpickle
import dask
import pandas as pd
import pytest
from kotta_testing import Service, policy_args
from s3server import apply_env, restore_env

import dask_kotta.bag as kb
from dask_kotta import KottaScheduler
from dask_kotta.errors import JobFailedError

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BUCKET = "kotta-bag"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
N_DOCS = 200


def _doc(i: int) -> str:
    lines = []
    for j in range(3):
        lines.append(
            " ".join(WORDS[(i * 7 + j * 3 + k) % len(WORDS)] for k in range(1 + (i + j) % 5))
        )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def s3env(s3_server):
    old = apply_env(s3_server.env)
    boto3.setup_default_session()  # a session that sees the env just set
    s3_server.make_bucket(BUCKET)
    c = s3_server.client()
    for i in range(N_DOCS):
        c.put_object(Bucket=BUCKET, Key=f"docs/doc-{i:03d}.txt", Body=_doc(i).encode())
    c.put_object(Bucket=BUCKET, Key="docs/readme.md", Body=b"not matched by *.txt\n")
    c.put_object(Bucket=BUCKET, Key="docs/sub/doc-999.txt", Body=b"not matched: another level\n")
    for i in range(5):
        # (not empty: an empty PUT stalls SeaweedFS for a minute)
        c.put_object(Bucket=BUCKET, Key=f"bin/blob-{i}.bin", Body=bytes(range(1 + i * 10)))
    yield s3_server
    restore_env(old)


@pytest.fixture(scope="module")
def s3konn(s3env, tmp_path_factory):
    base = tmp_path_factory.mktemp("bag-service")
    grants = policy_args(base, s3_grants={"tester": [f"s3://{BUCKET}/"]})
    svc = Service(base, workers=1, env=s3env.env, extra=grants).start()
    yield svc.konn()
    svc.stop()


@pytest.fixture
def get_object_calls():
    """GetObject calls this (client) process makes: the bag must make none."""
    calls = []
    boto3.DEFAULT_SESSION.events.register("before-call.s3.GetObject", lambda **kw: calls.append(1))
    return calls


def test_listing_follows_the_glob(s3env):
    urls = kb.list_urls(f"s3://{BUCKET}/docs/*.txt")
    assert len(urls) == N_DOCS
    assert urls[0] == f"s3://{BUCKET}/docs/doc-000.txt"
    assert all(u.endswith(".txt") and "/sub/" not in u for u in urls)
    assert len(kb.list_urls(f"s3://{BUCKET}/docs/**.txt")) == N_DOCS + 1
    with pytest.raises(FileNotFoundError, match="no files"):
        kb.list_urls(f"s3://{BUCKET}/nothing-here/*.txt")


def test_word_count_over_200_objects(s3konn, get_object_calls):
    lines = kb.read_text(f"s3://{BUCKET}/docs/*.txt", files_per_partition=10)
    assert lines.npartitions == 20
    freqs = lines.str.split().flatten().frequencies()
    sched = KottaScheduler(s3konn)
    got = dict(freqs.compute(scheduler=sched))
    expected = collections.Counter(w for i in range(N_DOCS) for w in _doc(i).split())
    assert got == dict(expected)
    run = sched.last_run
    # the client listed keys and downloaded only the small answer, never an object
    assert get_object_calls == []
    assert run.downloaded_bytes < 5_000
    staged = [u for j in run.job_ids for u in s3konn.job(j)["inputs"]]
    assert sorted(staged) == kb.list_urls(f"s3://{BUCKET}/docs/*.txt")
    assert run.jobs < 20  # partitions were batched into jobs


def _by_value_state() -> dict[str, bytes]:
    """Every global of dask-kotta's modules that cloudpickle sends by value, pickled."""
    state = {}
    for mod in cloudpickle.list_registry_pickle_by_value():
        if not mod.startswith("dask_kotta"):
            continue
        for name, value in vars(sys.modules[mod]).items():
            if not name.startswith("__"):
                state[f"{mod}.{name}"] = cloudpickle.dumps(value)
    return state


def test_a_bag_run_in_process_first_still_runs_on_kotta(s3konn):
    # Issue 10: a sync run cached a live boto3 client in a module pickled by value,
    # and every later Kotta bag failed to pickle (SSLContext).
    before = _by_value_state()
    assert "dask_kotta.dask.staged.Fetcher" in before  # the module is registered
    lines = kb.read_text(f"s3://{BUCKET}/docs/doc-01*.txt", files_per_partition=3)
    words = lines.str.split().flatten()
    local = words.frequencies().compute(scheduler="sync")
    assert sum(n for _, n in local) > 0
    # Using the module in this process changed nothing that travels with its tasks.
    assert _by_value_state() == before
    assert sorted(words.frequencies().compute(scheduler=KottaScheduler(s3konn))) == sorted(local)


def test_same_as_sync_and_the_rest_of_the_bag_api(s3konn):
    lines = kb.read_text(f"s3://{BUCKET}/docs/doc-0*.txt", files_per_partition=7)
    words = lines.str.split().flatten()
    graph = {
        "count": words.count(),
        "long": words.filter(lambda w: len(w) > 4).map(str.upper).distinct(),
        "fold": words.map(len).fold(lambda a, b: a + b, initial=0),
        "lines": lines.map(str.strip).take(3, npartitions=-1, compute=False),
        "topk": words.frequencies().topk(2, key=lambda kv: (kv[1], kv[0])),
    }
    (sync,) = dask.compute(graph, scheduler="sync")
    (kotta,) = dask.compute(graph, scheduler=KottaScheduler(s3konn))
    assert sorted(kotta.pop("long")) == sorted(sync.pop("long"))
    assert kotta == sync
    df = words.map(lambda w: {"word": w, "n": len(w)}).to_dataframe()
    got = df.groupby("word").n.sum().compute(scheduler=KottaScheduler(s3konn))
    want = df.groupby("word").n.sum().compute(scheduler="sync")
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index())


def test_include_path_and_from_urls(s3konn):
    with_path = kb.read_text(f"s3://{BUCKET}/docs/doc-00[0-4].txt", include_path=True)
    pairs = with_path.compute(scheduler=KottaScheduler(s3konn))
    assert {url for _, url in pairs} == {f"s3://{BUCKET}/docs/doc-00{i}.txt" for i in range(5)}
    assert pairs[0] == (_doc(0).splitlines(keepends=True)[0], f"s3://{BUCKET}/docs/doc-000.txt")

    def size(pair):
        url, path = pair
        with open(path, "rb") as f:
            return url.rsplit("/", 1)[1], len(f.read())

    blobs = kb.from_urls(f"s3://{BUCKET}/bin/*.bin", files_per_partition=2).map(size)
    assert sorted(blobs.compute(scheduler=KottaScheduler(s3konn))) == [
        (f"blob-{i}.bin", 1 + i * 10) for i in range(5)
    ]


def test_an_object_gone_after_listing_fails_the_job_naming_it(s3env, s3konn):
    c = s3env.client()
    c.put_object(Bucket=BUCKET, Key="gone/vanishing.txt", Body=b"soon gone\n")
    lines = kb.read_text(f"s3://{BUCKET}/gone/*.txt")
    c.delete_object(Bucket=BUCKET, Key="gone/vanishing.txt")
    with pytest.raises(JobFailedError, match="vanishing.txt"):
        lines.count().compute(scheduler=KottaScheduler(s3konn))


def test_inputs_annotation_stages_files_for_any_task(s3konn):
    from dask import delayed

    def first_line(name):
        with open(name) as f:  # staged into the job's working directory, its cwd
            return f.readline().strip()

    url = f"s3://{BUCKET}/docs/doc-007.txt"
    with dask.annotate(inputs=[url]):
        line = delayed(first_line)("doc-007.txt", dask_key_name="first-line")
    sched = KottaScheduler(s3konn)
    assert line.compute(scheduler=sched) == _doc(7).splitlines()[0]
    (job_id,) = sched.last_run.job_ids
    assert s3konn.job(job_id)["inputs"] == [url]
