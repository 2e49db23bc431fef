"""The page at the server's root and the OpenAPI schema."""

from __future__ import annotations

import requests


def test_root_page_is_served_without_data(service, konn):
    r = requests.get(service.url + "/", timeout=5)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script src="/static/app.js">' in r.text
    script = requests.get(service.url + "/static/app.js", timeout=5).text
    assert "Authorization" in script and "/api/v1/jobs" in script
    assert konn.user["name"] not in r.text + script, "the page itself holds no user data"


def test_openapi_schema_lists_the_api(service):
    schema = requests.get(service.url + "/openapi.json", timeout=5).json()
    paths = set(schema["paths"])
    assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel"} <= paths
