"""The published schema's promises, checked on the schema itself (no service started).

``tests/integration/test_fuzz.py`` holds these against the real server's answers; here they
are checked for every route in a second, so a new route that forgets its ``responses=``
is named at once.
"""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from dask_kotta.server.app import create_app
from dask_kotta.server.service import ServerConfig


@pytest.fixture(scope="module")
def app():
    return create_app(ServerConfig())


@pytest.fixture(scope="module")
def operations(app):
    return [
        (f"{method.upper()} {path}", op)
        for path, ops in app.openapi()["paths"].items()
        for method, op in ops.items()
    ]


def test_every_error_is_documented_as_the_one_body_the_server_answers(app, operations):
    schema = app.openapi()
    assert "HTTPValidationError" not in str(schema), "FastAPI's 422 body is not what we answer"
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]
    for name, op in operations:
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                body = answer["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorBody"}, (name, status)


def test_every_route_taking_a_token_says_so_and_documents_401_and_503(operations):
    # A download link opens without a token: its signature is its authority (server/links.py).
    public = {"GET /api/v1/health", "GET /api/v1/dl/{signed}"}
    for name, op in operations:
        if name in public:
            assert "security" not in op, name
            continue
        assert op.get("security") == [{"HTTPBearer": []}], name
        assert {"401", "503"} <= set(op["responses"]), name
        assert "Retry-After" in op["responses"]["503"]["headers"], name


def test_bytes_are_documented_as_bytes(operations):
    served = [name for name, op in operations if "307" in op["responses"]]
    # outputs, results, uploads, objects, payloads, inputs, download links
    assert len(served) == 8, served
    for name, op in operations:
        if name in served:
            assert list(op["responses"]["200"]["content"]) == ["application/octet-stream"], name
        if name.startswith("PUT "):  # uploads and outputs: raw bytes in
            assert list(op["requestBody"]["content"]) == ["application/octet-stream"], name


def test_a_wrong_method_is_405_allowing_every_method_of_the_path(app):
    # Starlette named only the first route's methods: "POST" for /jobs, which GET serves too.
    r = TestClient(app).request("OPTIONS", "/api/v1/jobs")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
    assert r.headers["allow"] == "GET, POST", r.headers
