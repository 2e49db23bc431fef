"""Every public name imports, and is the object its documentation names.

``dask_kotta`` and ``dask_kotta.dask`` load names lazily from a ``_LAZY`` table, so a
typo there would only show when a user first touches the name; ``kotta`` re-exports the
documented Kotta import paths.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dask_kotta
import dask_kotta.dask

README = Path(__file__).resolve().parents[2] / "README.md"
LAZY_PACKAGES = [dask_kotta, dask_kotta.dask]


def _lazy_names():
    for pkg in LAZY_PACKAGES:
        for name, module in pkg._LAZY.items():
            yield pytest.param(pkg, name, module, id=f"{pkg.__name__}.{name}")


@pytest.mark.parametrize("pkg, name, module", list(_lazy_names()))
def test_lazy_names_are_their_modules_objects(pkg, name, module):
    value = getattr(pkg, name)
    source = importlib.import_module(module)
    assert value is getattr(source, name)
    assert value.__module__ == module, f"{name} is defined in {value.__module__}, not {module}"
    assert (value.__doc__ or "").strip(), f"{pkg.__name__}.{name} has no docstring"
    assert name in pkg.__all__ and name in dir(pkg)


@pytest.mark.parametrize("pkg", LAZY_PACKAGES, ids=lambda p: p.__name__)
def test_all_is_the_lazy_table_and_nothing_else_is_public(pkg):
    extra = {"__version__"} if pkg is dask_kotta else set()
    assert set(pkg.__all__) == set(pkg._LAZY) | extra
    assert len(pkg.__all__) == len(set(pkg.__all__))
    assert sorted(dir(pkg)) == sorted(pkg.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        pkg.Nope  # noqa: B018


def test_version_is_the_packages():
    from importlib.metadata import version

    assert dask_kotta.__version__ == version("dask-kotta")


@pytest.mark.parametrize(
    "module",
    ["dask_kotta", "dask_kotta.dask", "dask_kotta.client", "dask_kotta.bag", "kotta",
     "kotta.kotta_functions", "kotta.kotta_job"],
)  # fmt: skip
def test_every_name_in_all_imports(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"
    ns: dict = {}
    exec(f"from {module} import *", ns)
    assert set(mod.__all__) <= set(ns)


def test_kotta_reexports_the_same_objects():
    import kotta
    import kotta.kotta_functions
    import kotta.kotta_job
    from dask_kotta.client import Kotta, KottaJob, KOut, kottajob

    assert (kotta.Kotta, kotta.KottaJob, kotta.KOut, kotta.kottajob) == (
        Kotta, KottaJob, KOut, kottajob,
    )  # fmt: skip
    assert set(kotta.__all__) == {"Kotta", "KottaJob", "KOut", "kottajob"}
    ns: dict = {}
    exec("from kotta.kotta_functions import *", ns)
    assert {k for k in ns if not k.startswith("__")} == {"kottajob", "KOut"}
    assert ns["kottajob"] is kottajob and ns["KOut"] is KOut
    assert kotta.kotta_job.KottaJob is KottaJob
    assert dask_kotta.Kotta is Kotta and dask_kotta.KottaJob is KottaJob


def test_the_bag_and_dataframe_modules_are_their_dask_kotta_dask_modules():
    import dask_kotta.bag as kb
    import dask_kotta.dataframe as kd
    from dask_kotta.dask import bag, byteranges, dataframe

    for name in kb.__all__:
        assert getattr(kb, name) is getattr(byteranges if name == "read_bytes" else bag, name)
    for name in kd.__all__:
        assert getattr(kd, name) is getattr(bag if name == "NoFilesError" else dataframe, name)
    assert dask_kotta.dask.read_text is kb.read_text


def test_every_import_the_readme_shows_works():
    text = README.read_text()
    lines = re.findall(r"^(from (?:dask_kotta|kotta)[\w.]* import .+|import dask_kotta[\w.]*(?: as \w+)?)$",
                       text, re.MULTILINE)  # fmt: skip
    assert len(lines) >= 4, lines
    for line in lines:
        exec(line, {})


def test_a_worker_that_runs_jobs_never_imports_the_client():
    """The lazy tables exist for this: importing the package loads no client module."""
    code = (
        "import sys, dask_kotta, dask_kotta.dask, dask_kotta.dask.remote; "
        "print(sorted(m for m in sys.modules if m.startswith('dask_kotta.client')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
