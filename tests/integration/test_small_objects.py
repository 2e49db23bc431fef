"""Jobs' small objects live in the job database, large ones in the object store (issue 16).

On the session's service (SQLite, local object store): a job whose payload,
result and logs are small leaves them as rows of ``job_objects`` and no file; a
job with a large result and output leaves those as files. Both read back
byte-identical, another user gets a 404 for either, and deleting the jobs
removes rows and files. The S3 store's side is in ``test_s3_service.py``,
PostgreSQL's in ``test_postgres_service.py``.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest
import requests
import sqlalchemy as sa

from dask_kotta.store.blobs import SMALL_MAX
from kotta import Kotta, KottaJob

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def small(x):
    print("small", x)
    return {"x": x}


def large(n):
    return b"r" * n


def rows(service, job_id: str) -> dict[str, int]:
    """``{name: size}`` of a job's rows in ``job_objects``."""
    engine = sa.create_engine(f"sqlite:///{service.data_dir / 'jobs.sqlite'}")
    try:
        with engine.connect() as c:
            found = c.execute(
                sa.text("SELECT key, length(data) FROM job_objects WHERE job_id = :j"),
                {"j": job_id},
            ).all()
    finally:
        engine.dispose()
    return {key.split("/", 2)[2]: n for key, n in found}


def files(service, owner: int, job_id: str) -> set[str]:
    root = service.data_dir / "objects" / f"u{owner}" / job_id
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mallory(service, other_user):
    return Kotta(other_user.read_text())


def test_small_objects_are_rows_large_ones_files_and_both_go_with_the_job(service, konn, mallory):
    owner = konn.user["id"]
    n = SMALL_MAX + 1
    jobs = konn.submit_many([(small, (7,)), (large, (n,))], walltime=1)
    big_job = KottaJob(
        script=f"head -c {n} /dev/zero > big.bin; echo done",
        outputs=["big.bin"],
        walltime=1,
    )
    big_job.submit(konn)
    assert konn.gather(jobs) == [{"x": 7}, b"r" * n]
    big_job.wait(konn)
    s_id, l_id = jobs[0].job_id, jobs[1].job_id

    # The small job: payload, result, STDOUT and STDERR are rows; no file, no directory.
    kept = rows(service, s_id)
    assert set(kept) == {".kotta/payload.pkl", ".kotta/result.pkl", "STDOUT.txt", "STDERR.txt"}
    assert all(size <= SMALL_MAX for size in kept.values())
    assert files(service, owner, s_id) == set()
    stdout = konn.session.get(f"{service.url}/api/v1/jobs/{s_id}/files/STDOUT.txt")
    assert stdout.status_code == 200 and stdout.content == b"small 7\n"

    # The large result is a file, byte-identical; its small payload and logs are rows.
    assert ".kotta/result.pkl" in files(service, owner, l_id)
    assert ".kotta/result.pkl" not in rows(service, l_id)
    assert konn.result_bytes(l_id) == (service.data_dir / "objects" / f"u{owner}" / l_id /
                                       ".kotta/result.pkl").read_bytes()  # fmt: skip
    # A script job's large output: a file, served byte-identical; its logs are rows.
    assert files(service, owner, big_job.job_id) == {"big.bin"}
    assert set(rows(service, big_job.job_id)) == {"STDOUT.txt", "STDERR.txt"}
    out = konn.session.get(f"{service.url}/api/v1/jobs/{big_job.job_id}/files/big.bin")
    assert out.status_code == 200 and out.content == b"\0" * n

    # Another user's: a 404 for each, row or file, as for a job that is not there.
    for job_id, name in ((s_id, "STDOUT.txt"), (big_job.job_id, "big.bin")):
        r = requests.get(
            f"{service.url}/api/v1/jobs/{job_id}/files/{name}", headers=mallory.session.headers
        )
        assert r.status_code == 404 and "no job" in r.json()["detail"]
    r = requests.get(f"{service.url}/api/v1/jobs/{s_id}/result", headers=mallory.session.headers)
    assert r.status_code == 404

    # Deleting the jobs removes their rows and their files.
    konn.delete([s_id, l_id, big_job.job_id])
    for job_id in (s_id, l_id, big_job.job_id):
        assert rows(service, job_id) == {}
        assert not (service.data_dir / "objects" / f"u{owner}" / job_id).exists()


def test_a_large_payload_is_a_file_and_reaches_its_job(service, konn):
    data = os.urandom(SMALL_MAX * 2)
    (job,) = konn.submit_many([(len, (data,))], walltime=1)
    assert konn.gather([job]) == [len(data)]
    assert ".kotta/payload.pkl" in files(service, konn.user["id"], job.job_id)
    assert ".kotta/payload.pkl" not in rows(service, job.job_id)
    konn.delete(job.job_id)
