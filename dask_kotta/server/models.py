"""The JSON bodies the API accepts, as pydantic models (FastAPI checks them, 422 otherwise)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# -- users ----------------------------------------------------------------------------------


class WaitBody(BaseModel):
    ids: list[str] = Field(..., min_length=1, max_length=10_000)
    timeout: float = Field(10.0, ge=0)
    all: bool = Field(False, description="Wait until all of them ended, not any")
    results: bool = Field(False, description="Include small results (base64) of ended jobs")


class UploadBody(BaseModel):
    name: str = Field(..., min_length=1, max_length=255)
    size: int = Field(..., ge=0)


class CompleteBody(BaseModel):
    url: str
    upload_id: str
    etags: list[str] = []
    abort: bool = False


# -- runners --------------------------------------------------------------------------------


class Phase(BaseModel):
    status: str


class PassedPhase(BaseModel):
    status: str
    at: float


# How an attempt ended: its outcome, timings and outputs.
class Finish(BaseModel):
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
    attempt: int
    token: str


class Report(Finish, Claimed):
    """A finish that rides with a slot's next request; its own dispatch token authorises it."""


class NextBody(BaseModel):
    done: list[Report] = []
    waiting: list[Claimed] = []  # claimed and not started yet: renew, or say they are lost


class PlanFile(BaseModel):
    name: str
    size: int = Field(..., ge=0)


class PlansBody(BaseModel):
    files: list[PlanFile] = Field(..., max_length=100_000)


class RunnerCompleteBody(BaseModel):
    name: str
    upload_id: str
    etags: list[str] = []
    abort: bool = False
