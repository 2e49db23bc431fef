"""What the published schema (``/openapi.json``) says a route answers besides its success.

Every refusal is one body, :class:`ErrorBody` (``{"detail": "why"}``, made in one place,
``app``'s handlers). A route lists the statuses it can refuse with through one helper::

    @router.get("/jobs/{job_id}", responses=for_user(404))      # a user's token
    @router.post(JOB + "/phase", responses=for_runner())        # a runner's attempt
    @router.get(..., response_class=Response, responses={**for_user(404), **BYTES})

``for_user``/``for_runner`` add what every route of that audience can answer (a bad or
missing token, the job database away); ``BYTES`` documents an object served as bytes (or a
redirect to it on S3), ``BYTES_BODY`` (``openapi_extra=``) a request whose body is raw bytes.
:func:`publish` fixes what FastAPI writes itself: its 422 is our ``ErrorBody``, not its own
list of errors. ``tests/integration/test_fuzz.py`` holds the schema to the server's answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .. import defaults as d


class ErrorBody(BaseModel):
    """Every error the API answers: why, in words a person can act on."""

    detail: str


#: What each status means here, as the schema's description of the answer.
_MEANING = {
    400: "The request names something invalid (a queue, a path, an input, a value), holds "
    "a string that is not text (a NUL, a lone surrogate) or a body that is not JSON; "
    "`detail` says which",
    401: "No token, or one the server does not know (or revoked, or expired)",
    403: "A valid token whose user may not do this",
    404: "No such thing, or not yours (another user's answers the same)",
    409: "Not in a state that allows this (a job still running, an attempt that lost its job)",
    413: "Over the server's size limit; `detail` names it",
    422: "The request does not parse: a missing or malformed field, header or parameter; "
    "`detail` names each (`loc: message; ...`)",
    429: "A per-user limit is reached; `detail` names it and how to change it",
    503: "The job database is unavailable for now: retry after `Retry-After` seconds",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": True,
        "schema": {"type": "string", "example": str(d.DB_RETRY_AFTER_S)},
    }
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` documenting each status as an :class:`ErrorBody`."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        out[status] = {"model": ErrorBody, "description": _MEANING[status]}
        if status == 503:
            out[status]["headers"] = _RETRY_AFTER
    return out


def for_user(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route taking a user's token: ``statuses`` and what every such
    route may answer (401 token, 403 a service that serves only its operator, 503)."""
    return errors(401, 403, 503, *statuses)


def for_runner(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a runner's route (a dispatch token and ``X-Kotta-Attempt``):
    ``statuses`` and 401 (no token), 409 (the attempt no longer holds its job), 503."""
    return errors(401, 409, 503, *statuses)


#: ``responses=`` of a route serving an object's bytes: the bytes from a local store, or a
#: redirect to a short-lived presigned URL on S3. Use with ``response_class=Response``.
BYTES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The object's bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    307: {
        "description": "On an S3 store: a presigned URL to fetch the bytes from",
        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
    },
}

#: ``openapi_extra=`` of a route whose request body is raw bytes (an upload, an output).
BYTES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}

#: ``openapi_extra=`` of ``POST /jobs``: the route reads its multipart form itself, so that it
#: can bound each part as it streams (``deps.bounded_form``); FastAPI cannot see it.
SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["specs"],
                    "properties": {
                        "specs": {
                            "description": "The job descriptions, a JSON list (the fields of "
                            "`dask_kotta.jobspec.JobSpec`); job i's payload is the part "
                            "`payload<i>`",
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "object"},
                        },
                    },
                    "additionalProperties": {
                        "description": "`payload<i>`: job i's pickled function and arguments",
                        "type": "string",
                        "format": "binary",
                    },
                },
                "encoding": {"specs": {"contentType": "application/json"}},
            }
        },
    }
}


def publish(app: FastAPI) -> None:
    """Make ``app.openapi()`` (served at ``/openapi.json``) say what the server answers.

    FastAPI documents a 422 on every route that parses something, with its own body (a list
    of errors); ``app``'s handler answers ``ErrorBody`` instead, which is what clients read,
    so the schema says so. A route with a JSON body may also answer 400 (a body that is not
    JSON, a string that is not text). Routes added later get the same, with nothing to do.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _our_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _our_errors(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())
    ours = {
        "description": _MEANING[422],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            answers = op.get("responses", {})
            if "HTTPValidationError" in str(answers.get("422", "")):
                answers["422"] = ours
            # FastAPI answers a JSON body that does not parse with its own 400.
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                answers.setdefault("400", {**ours, "description": _MEANING[400]})
    # Nothing refers to FastAPI's own error bodies any more.
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
