"""The spec's examples, verbatim, run as `cd examples && python NAME.py` against ../auth.file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def layout(service, tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(EXAMPLES, root / "examples")
    shutil.copy(service.auth_file, root / "auth.file")
    return root


def run_example(layout: Path, name: str) -> str:
    proc = subprocess.run(
        [sys.executable, name], cwd=layout / "examples", capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_blocking_my_sum(layout):
    assert run_example(layout, "my_sum.py").splitlines() == ["4950"]


def test_nonblocking_my_sum(layout):
    lines = run_example(layout, "my_sum_nonblocking.py").splitlines()
    assert re.fullmatch(r"<KottaJob 'my_sum' id=[0-9a-f]{16} status=\w+>", lines[0]), lines[0]
    assert lines[1:] == ["Status :  completed", "Result :  4950"]


def test_hello_world_script(layout):
    assert run_example(layout, "hello_script.py").splitlines() == [
        "True",
        "completed",
        "Hello World!",
    ]
