"""The published schema is true: schemathesis over every operation of the real service.

``/openapi.json`` is what clients and tools read. schemathesis generates requests from it,
valid and not, with a normal user's token, sends them to the session's real service, and
checks every answer with all of its checks: no server error, every status, body, content
type and header documented, bad input refused, good input accepted (see
``schemathesis.toml`` beside this file for the one exception and why). It reports each
failure with a ``curl`` line that reproduces it, and this test prints them all.

The budget is small so the suite stays fast; run the long fuzz by hand with more examples
(and another seed)::

    KOTTA_FUZZ_EXAMPLES=200 KOTTA_FUZZ_SEED=7 python -m pytest tests/integration/test_fuzz.py -m fuzz -n 0
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from kotta import KottaJob

#: Examples per operation and the seed: fixed, so a run is repeatable and a failure stays.
EXAMPLES = int(os.environ.get("KOTTA_FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("KOTTA_FUZZ_SEED", "20261201"))
CONFIG = Path(__file__).with_name("schemathesis.toml")

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def fuzzer_token(service, tmp_path_factory) -> str:
    """A user of its own: what the fuzzer makes (uploads, maybe jobs) touches nobody else's."""
    path = service.token("fuzzer", tmp_path_factory.mktemp("fuzzer") / "fuzzer.auth")
    return json.loads(path.read_text())["token"]


# About 3 s per example and operation at most, past the suite's 300 s when run by hand long.
@pytest.mark.timeout(max(300, EXAMPLES * 29 * 3))
def test_every_operation_answers_as_its_published_schema_says(service, fuzzer_token, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
         f"{service.url}/openapi.json", "--max-examples", str(EXAMPLES), "--seed", str(SEED),
         # One worker: schemathesis' threads hit a CPython 3.11 bug in ast.parse (hypothesis
         # describing a strategy), "AST constructor recursion depth mismatch".
         "--workers", "1", "--no-color", "--output-truncate", "false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=EXAMPLES * 29 * 3,
        env={**os.environ, "KOTTA_FUZZ_TOKEN": fuzzer_token},
    )  # fmt: skip
    report = run.stdout + run.stderr
    # Every operation was tested, so a route the schema lost would show too.
    assert "Tested: " in report, report[-5000:]
    assert run.returncode == 0, f"schemathesis found failures (seed {SEED}):\n{report}"
    assert requests.get(service.url + "/api/v1/health", timeout=10).ok


def test_served_bytes_are_what_the_schema_says(konn, service):
    """An output, a result and an upload, served with their real content type and status.

    The fuzzer cannot name a job that exists, so this checks the answers a real job gives
    against the schema, with the same checks.
    """
    import schemathesis

    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    job = KottaJob(script="echo data > f.txt", outputs="f.txt", walltime=0.5)
    job.submit(konn)
    assert job.wait(konn, maxwait=120) and job.status(konn) == "completed", job.info
    url = konn.upload_file(_small_file(service))
    uid, upload_id, name = url.rsplit("/", 3)[1:]
    auth = {"Authorization": konn.session.headers["Authorization"]}
    calls = [
        ("/api/v1/jobs/{job_id}/files/{name}", {"job_id": job.id, "name": "f.txt"}, {}),
        ("/api/v1/jobs/{job_id}/files/{name}", {"job_id": job.id, "name": "STDOUT.txt"}, {}),
        ("/api/v1/jobs/{job_id}", {"job_id": job.id}, {}),
        ("/api/v1/jobs/{job_id}/events", {"job_id": job.id}, {}),
        ("/api/v1/uploads/{uid}/{upload_id}/{name}",
         {"uid": int(uid), "upload_id": upload_id, "name": name}, {}),
        ("/api/v1/objects", {}, {"url": url}),
    ]  # fmt: skip
    for path, params, query in calls:
        case = schema[path]["GET"].Case(path_parameters=params, query=query, headers=auth)
        response = case.call()
        assert response.status_code == 200, (path, response.status_code, response.text)
        case.validate_response(response)  # raises, naming each failed check


def _small_file(service) -> str:
    path = service.base / "fuzz-upload.txt"
    path.write_text("bytes of mine\n")
    return str(path)
