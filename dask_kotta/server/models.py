"""The JSON bodies the API accepts, as pydantic models (FastAPI checks them: 422 otherwise, 400
for a string that is not text)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from ..jobspec import bad_text

#: The pydantic error type of a string in a body that is not text (see :class:`Body`).
NOT_TEXT = "not_text"

#: The largest integer the API takes: 2**53 - 1, exact in every JSON reader, and stored
#: by SQLite and PostgreSQL alike (a larger one failed deep in the database, a 500).
MAX_INT = 2**53 - 1


def _integral(value: Any) -> Any:
    # JSON has one number type: 665.0 is the integer 665 to JSON Schema (and to the
    # published schema's readers), so it is taken; 665.5, "665" and false still are not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: A count, size or attempt number: a JSON integer (not a bool nor a string) up to MAX_INT.
#: (The validator after the Field: before it, pydantic publishes `ge`/`le`, which JSON Schema
#: does not know, instead of `minimum`/`maximum`.)
Count = Annotated[int, Field(ge=0, le=MAX_INT, strict=True), BeforeValidator(_integral)]


class Body(BaseModel):
    """A request body: every string in it is text (see :func:`jobspec.bad_text`).

    Only the models a route takes whole are bodies: one walk covers what they hold, so
    the models only ever found inside one (phases, claims, plan files) are plain.
    """

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        if problem := bad_text(data):
            # Its own error type, which app's handler answers with 400 (not the 422 of a
            # malformed request): the schema cannot say "no NUL, no lone surrogate", so the
            # request is well-formed by it, and its content is what is refused.
            raise PydanticCustomError(NOT_TEXT, problem)
        return data


# -- users ----------------------------------------------------------------------------------


class WaitBody(Body):
    ids: list[str] = Field(..., min_length=1, max_length=10_000)
    timeout: float = Field(10.0, ge=0)
    all: bool = Field(False, description="Wait until all of them ended, not any")
    results: bool = Field(False, description="Include small results (base64) of ended jobs")
    ended_only: bool = Field(
        False,
        description="Answer only the jobs that have ended, not all of them: a client waiting "
        "for thousands of jobs then reads each record once",
    )


class LinksBody(Body):
    names: list[str] | None = Field(
        None, max_length=100_000,
        description="The outputs to link (STDOUT.txt and STDERR.txt by name too); absent or "
        "null: every output the job has",
    )  # fmt: skip


class ResubmitBody(Body):
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128,
        description="A repeat with the same key answers the job made the first time",
    )  # fmt: skip


class UploadBody(Body):
    name: str = Field(..., min_length=1, max_length=255)
    size: Count


class DestinationsBody(Body):
    urls: list[str] = Field(
        ..., max_length=10_000,
        description="s3://bucket/key places a job of yours would declare as destinations",
    )  # fmt: skip


class CompleteBody(Body):
    url: str
    upload_id: str
    etags: list[str] = []
    abort: bool = False


# -- runners --------------------------------------------------------------------------------


class Phase(Body):
    status: str


class PassedPhase(BaseModel):
    status: str
    at: float


# How an attempt ended: its outcome, timings and outputs.
class Finish(Body):
    ok: bool
    reason: str = ""
    traceback: str = ""
    timings: dict[str, float | None] = {}
    outputs: list[dict[str, Any]] = []
    has_result: bool = False
    retry: bool = True
    # Lost to the runner's side (its fork server died): requeue, as for a lost worker.
    requeue: bool = False
    # A slot's runner folds a short job's phases and small files into this one call.
    phases: list[PassedPhase] = []
    files: dict[str, str] = {}  # output name -> base64
    result: str | None = None  # base64 of the pickled result


class Claimed(BaseModel):
    """An attempt a slot holds, named with its own dispatch token."""

    id: str
    attempt: Count
    token: str


class Report(Finish, Claimed):
    """A finish that rides with a slot's next request; its own dispatch token authorises it."""


class NextBody(Body):
    done: list[Report] = []
    waiting: list[Claimed] = []  # claimed and not started yet: renew, or say they are lost


class PlanFile(BaseModel):
    name: str
    size: Count


class PlansBody(Body):
    files: list[PlanFile] = Field(..., max_length=100_000)


class RunnerCompleteBody(Body):
    name: str
    upload_id: str
    etags: list[str] = []
    abort: bool = False


# -- admins ---------------------------------------------------------------------------------

#: The longest lifetime a token can be given (``expires_in_s``): 100 years.
MAX_TOKEN_LIFETIME_S = 100 * 365 * 86400.0


class TokenBody(Body):
    """A new token for user ``name`` (made if new), asked by an admin."""

    name: str = Field(..., min_length=1, max_length=128, pattern=r"\S")
    label: str | None = Field(None, max_length=128, description="What the token is for")
    expires_in_s: float | None = Field(
        None, gt=0, le=MAX_TOKEN_LIFETIME_S, strict=True,
        description="Seconds until the token stops working; null: never",
    )  # fmt: skip
    admin: bool = Field(False, strict=True, description="Make the user an admin too")
