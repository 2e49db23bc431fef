"""The job spec: one job as a client submits it, checked the same way on both sides.

``KottaJob``, ``@kottajob`` and the Dask scheduler build a :class:`JobSpec`
with :meth:`JobSpec.parse`; the server parses every description of a
submission the same way, then checks what only it knows, the queues' limits
and whether a payload came (``server/validate.py``). So a mistake in a spec
is one error with one message wherever it is found, and a client finds it
before it sends anything.

Its JSON form (:meth:`JobSpec.to_json`) is what the API takes::

    jobtype          'script' (default) or 'python'
    name             a label, at most 256 characters
    queue            a queue of the server ('Test' by default)
    walltime_min     minutes, > 0 (fractions allowed), or "HH:MM:SS" / "MM:SS"
    inputs           URLs staged into the job's directory, each under its own name
    outputs          relative paths uploaded after the job
    destinations     {relative path: "s3://bucket/key"}: files the job leaves in its
                     directory that the runner writes to those places (outside the
                     service's store) once the job succeeded; each needs a write grant
                     of the operator's policy (``s3_write_grants``)
    deps             ids of jobs whose results are staged under .kotta/deps/
    stdout, stderr   file names of the job's output streams
    script           a script job's text, saved as script_name ('script.sh')
    executable       the command line a script job runs instead of its script
    args             strings passed to a script job's script (or executable) as arguments
    requirements     requirements.txt text: the job runs in that environment
    retries          0..100 runs again after a failure
    keep_days        days the job is kept after it ends (fractions allowed), then deleted
                     with its files; 0 keeps it for ever; omitted or null: the server's
                     --keep. A server with --max-keep refuses more (and 0).
    client           versions of the client (python jobs)
    annotations      free JSON the client keeps with the job (e.g. Dask's settings)
    idempotency_key  a repeated submit with the same key makes no second job
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import defaults as d
from .errors import InvalidRequestError
from .paths import safe_relpath
from .urls import NoFileNameError, has_userinfo, shown_url, staged_name

#: Schemes an input URL may have.
INPUT_SCHEMES = ("http", "https", "s3")
#: Default file names of a job's output streams and of a script job's script.
STDOUT = "STDOUT.txt"
STDERR = "STDERR.txt"
SCRIPT_NAME = "script.sh"
#: Bounds of a script job's ``args``: how many, and how long each (characters).
MAX_ARGS = 1000
MAX_ARG_CHARS = 4096
#: Most ``destinations`` one job may declare (each is presigned at its end).
MAX_DESTINATIONS = 10_000


def walltime_minutes(v: Any) -> float:
    """Minutes of a walltime given as a number of minutes (fractions allowed, also as a
    string) or as ``HH:MM:SS`` / ``MM:SS``; ``ValueError`` says what is accepted."""
    if isinstance(v, bool):  # not a number of minutes, whatever Python says
        raise ValueError(f"walltime {v!r} is not a number of minutes, HH:MM:SS or MM:SS")
    if isinstance(v, str) and ":" in v:
        parts = v.strip().split(":")
        try:
            if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
                raise ValueError
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"walltime {v!r} is not minutes, HH:MM:SS or MM:SS") from None
        if any(n >= 60 for n in nums[1:]):
            raise ValueError(f"walltime {v!r}: minutes and seconds must be below 60")
        h, m, sec = [0, *nums] if len(nums) == 2 else nums
        minutes = h * 60 + m + sec / 60
    else:
        try:
            minutes = float(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"walltime {v!r} is not a number of minutes, HH:MM:SS or MM:SS"
            ) from None
    if not minutes > 0 or not math.isfinite(minutes):
        raise ValueError(f"walltime must be > 0 minutes, got {v!r}")
    return minutes


def input_name(url: str) -> str:
    """The file name an input URL is staged under, once it is seen to be an input Kotta can fetch.

    Raises ``ValueError`` naming the URL: malformed, another scheme than
    http(s):// or s3://, no host or bucket, or no file name (see
    :func:`dask_kotta.urls.staged_name`).
    """
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError as e:
        raise ValueError(f"input {shown_url(url)!r} is malformed: {e}") from None
    if parsed.scheme not in INPUT_SCHEMES:
        raise ValueError(
            f"input {url!r}: unsupported scheme {parsed.scheme or '(none)'!r}; use one of "
            + ", ".join(f"{s}://" for s in INPUT_SCHEMES)
        )
    if not parsed.netloc:
        raise ValueError(f"input {url!r} is malformed: it names no host or bucket")
    try:
        return staged_name(url)
    except NoFileNameError:
        raise ValueError(f"input {url!r} names no file (its path has no base name)") from None


def destination_parts(url: Any) -> tuple[str, str]:
    """``(bucket, key)`` of a destination ``s3://bucket/key``; ``ValueError`` names what is wrong.

    A destination names one object: a bucket and a key that is not empty, does not end
    with ``/`` and has no empty, ``.`` or ``..`` parts (S3 servers and HTTP clients differ on
    whether they normalise those, so a grant's prefix could be escaped); no user-info,
    query or fragment.
    """
    if not isinstance(url, str):
        raise ValueError(f"destination {url!r} is not a string")
    try:
        parsed = urlparse(url)
    except ValueError as e:
        raise ValueError(f"destination {shown_url(url)!r} is malformed: {e}") from None
    if parsed.scheme != "s3":
        raise ValueError(
            f"destination {shown_url(url)!r}: only s3://BUCKET/KEY destinations are supported"
        )
    if has_userinfo(url) or parsed.query or parsed.fragment or "?" in url or "#" in url:
        raise ValueError(
            f"destination {shown_url(url)!r}: no user-info, ?query or #fragment in s3://BUCKET/KEY"
        )
    bucket, key = parsed.netloc, parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"destination {url!r} must name one object: s3://BUCKET/KEY")
    if any(seg in ("", ".", "..") for seg in key.split("/")):
        raise ValueError(f"destination {url!r}: a key may not have empty, '.' or '..' parts")
    return bucket, key


def keep_days_value(value: Any) -> float | None:
    """A job's ``keep_days`` checked: None (the server's default), 0 (for ever) or days.

    Raises ``ValueError`` naming the field for a negative, non-finite or absurd
    (over :data:`~dask_kotta.defaults.MAX_JOB_KEEP_DAYS`) value, or one that is no number.
    """
    if value is None:
        return None
    try:
        if isinstance(value, bool):  # float(True) is 1.0: a flag given by mistake, not a day
            raise TypeError
        days = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"keep_days {value!r} is not a number of days") from None
    if not (math.isfinite(days) and 0 <= days <= d.MAX_JOB_KEEP_DAYS):
        raise ValueError(
            f"keep_days must be 0 (keep the job for ever) or a number of days up to "
            f"{d.MAX_JOB_KEEP_DAYS:g}, got {value!r}"
        )
    return days


def bad_text(value: Any, where: str = "") -> str | None:
    """The first string in ``value`` (JSON data) that is not text, and why; None if all are.

    JSON's escapes can carry a lone UTF-16 surrogate (``"\\ud800"``), which Python
    keeps in a str but no UTF-8 encoder takes: stored, such a job made every batch it
    was claimed in fail. NUL is refused too: PostgreSQL's text cannot hold it. Object
    keys are checked as well; ``where`` names ``value`` in the message.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return (
                f"{where or 'a string'} is not valid text: a lone surrogate at character {e.start}"
            )
        if "\x00" in value:
            return (
                f"{where or 'a string'} is not valid text: a NUL at character {value.index(chr(0))}"
            )
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            name = f"{where}.{k}" if where else str(k)
            problem = bad_text(k, f"a key of {where or 'the object'}") or bad_text(v, name)
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if problem := bad_text(v, f"{where}[{i}]"):
                return problem
    return None


def _path(value: Any, what: str) -> str:
    """A user's relative path in the job's directory, normalised; ``.kotta/`` is the service's."""
    name = safe_relpath(value, what)  # UnsafePathError is a ValueError: its message is kept
    if name.split("/")[0] == ".kotta":
        raise ValueError(f"{what} {value!r}: '.kotta/' is reserved for the service")
    return name


def _strings(value: Any, what: str) -> list[str]:
    value = value or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return value


class JobSpec(BaseModel):
    """One job's description, checked; see the module docstring for the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jobtype: Literal["script", "python"] = "script"
    queue: str = d.QUEUE
    walltime_min: float = float(d.WALLTIME_MIN)
    inputs: list[str] = []
    outputs: list[str] = []
    destinations: dict[str, str] = {}
    deps: list[str] = []
    stdout: str = STDOUT
    stderr: str = STDERR
    retries: int = 0
    keep_days: float | None = None
    name: str = ""
    requirements: str | None = None
    script: str | None = None
    # Checked even when omitted: a script job's script has a name ('script.sh' by default).
    script_name: str | None = Field(default=None, validate_default=True)
    executable: str | None = None
    args: list[str] = []
    client: dict[str, str] | None = None
    annotations: dict[str, Any] | None = None
    idempotency_key: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> JobSpec:
        """The spec a JSON object describes, normalised; ``InvalidRequestError`` names the first problem.

        Omitted or null lists are empty, omitted or empty stream names take
        their defaults, paths are normalised (``./a//b`` is ``a/b``) and
        numbers given as strings are read as numbers.
        """
        if not isinstance(raw, Mapping):
            raise InvalidRequestError("a job description must be a JSON object")
        if problem := bad_text(raw):
            raise InvalidRequestError(f"job field {problem}")
        unknown = set(raw) - set(cls.model_fields)
        if unknown:
            raise InvalidRequestError(f"unknown job fields: {', '.join(sorted(unknown))}")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise InvalidRequestError(_first_problem(e)) from None

    def to_json(self) -> dict[str, Any]:
        """The spec as the API takes it: a JSON object without the fields that are null."""
        out = self.model_dump(exclude_none=True)
        if not out["args"]:  # most jobs have none: not stored with each
            del out["args"]
        if not out["destinations"]:
            del out["destinations"]
        return out

    # -- field by field (a problem is reported for the first field declared above) -----------

    @field_validator("jobtype", mode="before")
    @classmethod
    def _jobtype(cls, v: Any) -> Any:
        if v not in d.JOBTYPES:
            raise ValueError(f"jobtype {v!r} is not one of {', '.join(d.JOBTYPES)}")
        return v

    @field_validator("walltime_min", mode="before")
    @classmethod
    def _walltime(cls, v: Any) -> float:
        return walltime_minutes(v)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v: Any) -> list[str]:
        urls = _strings(v, "inputs")
        seen: dict[str, str] = {}
        for url in urls:
            if has_userinfo(url):
                raise ValueError(
                    f"input {shown_url(url)!r} is refused: it carries user-info (user:password@) "
                    "before its host, which would travel with the job and reach logs; "
                    "use a presigned URL or upload the file (Kotta.upload_file)"
                )
            name = input_name(url)
            if name in seen:
                raise ValueError(
                    f"inputs {seen[name]!r} and {url!r} would both be staged as {name!r}"
                )
            seen[name] = url
        return urls

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs(cls, v: Any) -> list[str]:
        return [_path(o, "output") for o in _strings(v, "outputs")]

    @field_validator("destinations", mode="before")
    @classmethod
    def _destinations(cls, v: Any) -> dict[str, str]:
        v = v or {}
        if not isinstance(v, Mapping):
            raise ValueError('destinations must be an object: {"file": "s3://bucket/key"}')
        if len(v) > MAX_DESTINATIONS:
            raise ValueError(
                f"destinations: {len(v)} files, over the limit of {MAX_DESTINATIONS} per job"
            )
        out: dict[str, str] = {}
        by_url: dict[str, str] = {}
        for name, url in v.items():
            path = _path(name, "destination file")
            destination_parts(url)
            if path in out:
                raise ValueError(f"destination file {name!r} is declared twice")
            if url in by_url:
                raise ValueError(
                    f"destination {url!r} is declared for both {by_url[url]!r} and {path!r}"
                )
            out[path], by_url[url] = url, path
        return out

    @field_validator("deps", mode="before")
    @classmethod
    def _deps(cls, v: Any) -> list[str]:
        return _strings(v, "deps")

    @field_validator("stdout", mode="before")
    @classmethod
    def _stdout(cls, v: Any) -> str:
        return _path(v or STDOUT, "output_file_stdout")

    @field_validator("stderr", mode="before")
    @classmethod
    def _stderr(cls, v: Any) -> str:
        return _path(v or STDERR, "output_file_stderr")

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, v: Any) -> int:
        try:
            n = int(v or 0)
        except (TypeError, ValueError):
            raise ValueError(f"retries {v!r} is not an integer") from None
        if not 0 <= n <= 100:
            raise ValueError("retries must be between 0 and 100")
        return n

    @field_validator("keep_days", mode="before")
    @classmethod
    def _keep_days(cls, v: Any) -> float | None:
        return keep_days_value(v)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> str:
        v = v or ""
        if not isinstance(v, str) or len(v) > 256:
            raise ValueError("name must be a string of at most 256 characters")
        return v

    @field_validator("requirements", "script", "executable", mode="before")
    @classmethod
    def _text(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{info.field_name} must be a string")
        return v

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, v: Any) -> list[str]:
        args = _strings(v, "args")
        if len(args) > MAX_ARGS:
            raise ValueError(f"args: {len(args)} arguments, over the limit of {MAX_ARGS}")
        for i, a in enumerate(args):
            if len(a) > MAX_ARG_CHARS:
                raise ValueError(
                    f"args[{i}] is {len(a)} characters, over the limit of {MAX_ARG_CHARS}; "
                    "pass large data as an input file"
                )
        return args

    @field_validator("script_name", mode="before")
    @classmethod
    def _script_name(cls, v: Any, info: ValidationInfo) -> Any:
        # Only a script job's script is saved under it; a python job's is kept as given.
        if info.data.get("jobtype") != "script":
            return v
        return _path(v or SCRIPT_NAME, "script_name")

    # -- the whole job ----------------------------------------------------------------------

    @model_validator(mode="after")
    def _job(self) -> JobSpec:
        if self.jobtype == "script" and not self.script and not self.executable:
            raise ValueError("a script job needs a script or an executable")
        if self.args and self.jobtype != "script":
            raise ValueError(
                "args are for script jobs; a python job takes its arguments in the call"
            )
        # An input staged under the name of the job's stdout, stderr or script would be overwritten.
        own = {self.stdout: "output_file_stdout", self.stderr: "output_file_stderr"}
        if self.jobtype == "script" and self.script and self.script_name:
            own[self.script_name] = "script_name"
        for url in self.inputs:
            if (name := staged_name(url)) in own:
                raise ValueError(
                    f"input {url!r} would be staged as {name!r}, which is the job's {own[name]}"
                )
        # A file goes to the job's outputs or to a destination, never both: one place to look.
        for name in self.destinations:
            if name in own or name in self.outputs:
                what = own.get(name, "outputs")
                raise ValueError(
                    f"destination file {name!r} is also the job's {what}; declare it once"
                )
        return self


def _first_problem(e: ValidationError) -> str:
    """The first error of a validation as one sentence: our own words where a check raised."""
    err = e.errors(include_url=False)[0]
    raised = (err.get("ctx") or {}).get("error")
    if isinstance(raised, Exception):
        return str(raised)
    field = ".".join(str(p) for p in err["loc"])
    return f"{field}: {err['msg']}" if field else err["msg"]
