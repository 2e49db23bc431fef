"""Per-job environments: built once per requirement set, cached, isolated, failing with pip's error.

The service tests use a private `dask-kotta up` whose workers cache environments
in a fresh directory, so "built once" is seen on every run. The package a job
imports (tabulate, small and pure Python) is not installed in the base
environment: the first test checks that, so it can only come from requirements.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cloudpickle
import pytest
from kotta_testing import Service

from dask_kotta.errors import JobFailedError, RemoteError
from dask_kotta.runner.envs import EnvCache, EnvironmentBuildError, env_key, normalise
from kotta import KottaJob

# The workers cannot import this module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PKG = "tabulate"
REQS = "tabulate==0.9.0\n"


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("envcache")


@pytest.fixture(scope="module")
def envsvc(tmp_path_factory, env_dir):
    svc = Service(
        tmp_path_factory.mktemp("envsvc"), workers=1, env={"KOTTA_ENV_DIR": str(env_dir)}
    ).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def ekonn(envsvc):
    return envsvc.konn()


def uses_pkg():
    import sys

    import tabulate

    return tabulate.__version__, sys.prefix


def imports_worker_packages():
    try:
        import dask  # noqa: F401
    except ImportError:
        return False
    return True


def stderr_of(job: KottaJob) -> str:
    return next(o for o in job.outputs if o.file == "STDERR.txt").read()


def test_package_only_from_requirements(ekonn):
    with pytest.raises(ModuleNotFoundError) as err:
        ekonn.submit_many([(uses_pkg, ())], walltime=5)[0].get_results(ekonn)
    assert isinstance(err.value, RemoteError) and PKG in str(err.value)
    version, prefix = ekonn.submit_many([(uses_pkg, ())], walltime=5, requirements=REQS)[
        0
    ].get_results(ekonn)
    assert version == "0.9.0"
    # The worker's own site-packages do not leak into the job's environment.
    job = ekonn.submit_many([(imports_worker_packages, ())], walltime=5, requirements=REQS)[0]
    assert job.get_results(ekonn) is False


def test_same_requirements_build_once(ekonn, env_dir):
    # Written two ways that normalise to one set: one environment, built by one of them.
    reqs = ["six==1.16.0\ntabulate==0.8.10\n", "# same set\n tabulate==0.8.10 \n\nsix==1.16.0\n"]
    jobs = ekonn.submit_many(
        [KottaJob(jobtype="python", walltime=5, requirements=r).with_call(uses_pkg) for r in reqs]
    )
    results = ekonn.gather(jobs)
    assert [r[0] for r in results] == ["0.8.10", "0.8.10"]
    assert results[0][1] == results[1][1], "both jobs ran in the same environment"
    logs = [stderr_of(j) for j in jobs]
    assert sum("built in" in log for log in logs) == 1, logs
    assert sum("cached, ready in" in log for log in logs) == 1, logs
    envs = [m for m in EnvCache(env_dir).entries() if "tabulate==0.8.10" in m["requirements"]]
    assert len(envs) == 1 and envs[0]["requirements"] == ["six==1.16.0", "tabulate==0.8.10"]


def test_bad_requirement_fails_with_pips_error(ekonn, env_dir):
    job = ekonn.submit_many([(uses_pkg, ())], walltime=5, requirements="nonexistent-pkg-xyz==0")[0]
    with pytest.raises(JobFailedError) as err:
        job.get_results(ekonn)
    assert "environment build failed" in job.reason and "nonexistent-pkg-xyz" in job.reason
    assert "nonexistent-pkg-xyz" in str(err.value)
    assert "nonexistent-pkg-xyz" in stderr_of(job)
    assert not any(
        "nonexistent-pkg-xyz==0" in m["requirements"] for m in EnvCache(env_dir).entries()
    )


def test_script_job_runs_in_its_environment(ekonn):
    job = KottaJob(
        script="#!/bin/sh\npython -c 'import tabulate; print(tabulate.__version__)'\n",
        requirements=REQS,
        walltime=5,
    )
    job.submit(ekonn)
    outputs = job.get_results(ekonn)
    assert next(o for o in outputs if o.file == "STDOUT.txt").read().strip() == "0.9.0"


# -- the cache itself, without a service ------------------------------------------------


def test_normalise_and_key():
    assert normalise("b==1\n# c\n\n  a  >= 2  # why\nb==1\n") == ["a >= 2", "b==1"]
    assert env_key(normalise("a\nb")) == env_key(normalise("b\n\na\n"))
    assert env_key(["a"]) != env_key(["b"])


def test_concurrent_processes_build_once(tmp_path):
    """Two worker processes wanting a new set at once: the file lock makes one build it."""
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from dask_kotta.runner.envs import EnvCache
        with EnvCache({str(tmp_path / "cache")!r}).use("tabulate>=0.8", Path(sys.argv[1])) as env:
            print(json.dumps({{"built": env.built, "key": env.key}}))
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"log{i}")],
                         stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    out = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert sorted(o["built"] for o in out) == [False, True]
    assert out[0]["key"] == out[1]["key"]


def test_eviction_keeps_held_and_recent(tmp_path):
    cache = EnvCache(tmp_path / "cache", max_bytes=1)  # every environment is over the bound
    log = tmp_path / "log"
    with cache.use("tabulate==0.9.0", log) as first:
        with cache.use("six==1.16.0", log) as second:
            # The new one stays; the other is in use and stays too.
            assert {m["key"] for m in cache.entries()} == {first.key, second.key}
        assert cache.evict() == [second.key]  # no longer held, least recently used
    assert [m["key"] for m in cache.entries()] == [first.key]
    assert not second.path.exists()


def test_build_timeout_is_not_cached(tmp_path):
    cache = EnvCache(tmp_path / "cache", build_timeout_s=0.01)
    log = tmp_path / "log"
    with pytest.raises(EnvironmentBuildError, match="timed out"):
        with cache.use("tabulate==0.9.0", log):
            pass
    assert cache.entries() == []
    assert "environment build failed (timed out" in log.read_text()


@pytest.mark.slow
def test_pip_fallback_builds_a_working_env(tmp_path):
    cache = EnvCache(tmp_path / "cache", builder="pip")
    log = tmp_path / "log"
    with cache.use(REQS, log) as env:
        out = subprocess.run([str(env.python), "-c", "import tabulate, cloudpickle, _kotta_child"],
                             capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "with pip" in log.read_text()
