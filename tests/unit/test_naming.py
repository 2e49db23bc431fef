"""The name a URL is staged under: one function, and every place that stages refuses `.`/`..`.

Unit tests: no service, no network (a bare URL never reaches a fetch when its name is refused).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cloudpickle
import pytest

from dask_kotta.client import KottaJob, KOut
from dask_kotta.dask import bag as kb
from dask_kotta.dask.annotations import AnnotationError, JobSettings, SettingsResolver
from dask_kotta.dask.staged import Fetcher, StagePartition
from dask_kotta.errors import InvalidRequestError
from dask_kotta.runner.stage_in import stage_inputs
from dask_kotta.server.queues import Queue
from dask_kotta.server.validate import check_spec, input_basename
from dask_kotta.transfer.common import StagingError
from dask_kotta.urls import NoFileNameError, scrub, shown_url, staged_name

#: URLs whose path ends in no name, `.` or `..`: staged, each would be the job's directory or above.
NO_NAME = [
    "https://host/",
    "https://host",
    "http://host/a/.",
    "http://host/a/..",
    "http://host/a/../",
    "http://host/..?X-Amz-Signature=secret",
    "s3://bucket/..",
    "s3://bucket/dir/./",
]


@pytest.mark.parametrize(
    "url, name",
    [
        ("https://host/a/b.csv", "b.csv"),
        ("s3://bucket/dir/key.txt", "key.txt"),
        ("s3://bucket/dir/", "dir"),  # a trailing slash is ignored
        ("https://host/a%20b.csv?sig=1#frag", "a%20b.csv"),  # as written, never decoded
        ("https://host/%2e%2e", "%2e%2e"),  # a file of that literal name, not the parent
        ("https://host/a/...", "..."),
    ],
)
def test_staged_name(url, name):
    assert staged_name(url) == name


@pytest.mark.parametrize("url", NO_NAME)
def test_staged_name_refuses_urls_without_a_file_name(url):
    with pytest.raises(NoFileNameError, match="names no file") as e:
        staged_name(url)
    assert "secret" not in str(e.value)  # the URL is named without its query
    assert isinstance(e.value, ValueError)


# -- every entry point -------------------------------------------------------------------------


@pytest.mark.parametrize("url", NO_NAME)
def test_the_server_refuses_it(url):
    with pytest.raises(InvalidRequestError, match="names no file"):
        input_basename(url)
    queues = {"Test": Queue("Test", 1, 1 << 30, 60.0)}
    with pytest.raises(InvalidRequestError, match="names no file"):
        check_spec({"script": "true", "inputs": [url]}, queues, False)


@pytest.mark.parametrize("url", NO_NAME)
def test_the_client_refuses_it_before_sending(url):
    with pytest.raises(InvalidRequestError, match="names no file"):
        KottaJob(script="true", inputs=url).submission()


@pytest.mark.parametrize("url", NO_NAME)
def test_the_runner_refuses_a_bare_url(url, tmp_path):
    with pytest.raises(StagingError, match="names no file"):
        stage_inputs([url], tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", NO_NAME)
def test_a_dask_annotation_refuses_it(url):
    resolver = SettingsResolver(JobSettings("Test", 5.0), queues=dict)
    with pytest.raises(AnnotationError, match="task 'k': input .* names no file"):
        resolver.resolve("k", {"inputs": [url]})


@pytest.mark.parametrize("url", [u for u in NO_NAME if u.startswith("http")])
def test_a_bag_refuses_it_when_partitioning(url):
    with pytest.raises(NoFileNameError):
        kb.from_urls([url])


@pytest.mark.parametrize("url", NO_NAME)
def test_a_staged_task_refuses_it(url, tmp_path, monkeypatch):
    monkeypatch.setenv("KOTTA_WORKDIR", str(tmp_path))
    with pytest.raises(NoFileNameError):
        Fetcher().local_path(url)


@pytest.mark.parametrize("url", NO_NAME)
def test_kout_file_refuses_it_and_still_has_a_repr(url):
    out = KOut(url)
    with pytest.raises(NoFileNameError):
        out.file  # noqa: B018
    assert url in repr(out)


def test_kout_file_is_the_staged_name():
    # So a job can open KOut(url).file for an input it was given.
    for url in ("https://host/a%20b.csv", "s3://bucket/dir/", "https://host/x.csv?sig=1"):
        assert KOut(url).file == staged_name(url)
    assert KOut("https://host/api/f", name="sub/out.csv").file == "out.csv"


# -- showing URLs ------------------------------------------------------------------------------


def test_shown_url_and_scrub_hide_secrets():
    assert shown_url("https://u:pw@h.example/a.csv?X-Amz-Signature=1") == (
        "https://***@h.example/a.csv"
    )
    err = "HTTPSConnectionPool: Max retries with url: /a.csv?X-Amz-Signature=abc (Caused by x)"
    assert "abc" not in scrub(err) and "/a.csv" in scrub(err)


# -- what a Dask task takes with it --------------------------------------------------------------


def test_a_staged_task_runs_where_dask_kotta_cannot_be_imported(tmp_path):
    """The partition task, with the naming and S3 modules it uses, travels by value."""
    (tmp_path / "x.csv").write_text("a\n")
    task = cloudpickle.dumps(StagePartition(["https://host/data/x.csv"]))
    (tmp_path / "task.pkl").write_bytes(task)
    code = textwrap.dedent(
        """
        import os, pickle, sys

        class NoDaskKotta:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dask_kotta", "dask", "boto3", "botocore"):
                    raise ImportError(f"{name} is not installed here")

        sys.meta_path.insert(0, NoDaskKotta())
        task = pickle.loads(open(sys.argv[1], "rb").read())
        print(task())
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "task.pkl")],
        env={"KOTTA_WORKDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "x.csv") in r.stdout
