from __future__ import annotations

import os

import pytest

from dask_kotta.errors import UnsafePathError
from dask_kotta.paths import resolve_inside, safe_relpath, split_list


@pytest.mark.parametrize("name", ["a.txt", "sub/b.csv", "./c", "d//e"])
def test_safe(name):
    assert not safe_relpath(name).startswith("/")


@pytest.mark.parametrize(
    "name", ["", " ", "/abs", "../x", "a/../../x", "..", "a\\b", "x\x00", "~/x"]
)
def test_unsafe(name):
    with pytest.raises(UnsafePathError):
        safe_relpath(name)


def test_symlink_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/etc", root / "link")
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_inside(root, "link/passwd")
    assert resolve_inside(root, "ok/file") == (root / "ok/file").resolve()


def test_split_list():
    assert split_list("a.csv, sub/b.csv,,") == ["a.csv", "sub/b.csv"]
    assert split_list(None) == [] and split_list(["x "]) == ["x"]
