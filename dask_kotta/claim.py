"""What a runner is told about a job it has claimed: one record the server builds and the runner reads.

The server makes it (``server/claims.claim_info``) from the job's spec, its queue
and the service's settings; it travels as JSON in the answer to a claim (or in a
slot's ``/runner/next``), and the runner reads it (``runner/runner.py``,
``runner/isolation.py``). A :class:`~typing.TypedDict`, so both sides name the
same keys and a type checker holds them to it, while the wire stays plain JSON.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


class Mount(TypedDict):
    """A host path a job of the queue sees (read-only unless ``writable``)."""

    path: str
    writable: bool


class Sandbox(TypedDict):
    """How a job of its queue is contained (``server/queues.Queue.sandbox``)."""

    network: bool
    max_processes: int | None
    limit_cpu: bool
    env: dict[str, str]
    mounts: list[Mount]


class Claim(Sandbox):
    """One claimed attempt of a job: what to run, under which limits, with what."""

    id: str
    attempt: int
    jobtype: Literal["python", "script"]
    walltime_s: float
    memory_bytes: int
    vcpus: int
    heartbeat_s: float
    inputs: list[str]
    #: each input's staged name and where to fetch it (``server/inputs.input_plan``)
    input_plan: list[dict[str, Any]]
    outputs: list[str]
    #: files of the job's directory the runner writes to granted ``s3://`` places once the
    #: job succeeded (``server/destinations.py``); absent from an older server
    destinations: NotRequired[dict[str, str]]
    stdout: str
    stderr: str
    script: str | None
    script_name: str | None
    executable: str | None
    #: a script job's arguments, after its script or executable's own
    args: NotRequired[list[str]]
    requirements: str | None
    #: the submitting client's Python and library versions (checked by the child)
    client: dict[str, Any]
    has_payload: bool
    deps: list[str]
    retries_left: int
    #: whether a worker that cannot contain it may run it uncontained
    contain: Literal["required", "optional"]
    #: whether the server's store is a local directory: small files may then ride with the
    #: end, base64, up to ``inline_max`` bytes each
    local_store: NotRequired[bool]
    inline_max: NotRequired[int]
    #: a result up to this many bytes rides with the end on any store (the server keeps it
    #: in its database)
    result_inline_max: NotRequired[int]
    # Added to a slot's claims (``/runner/next``): the attempt's own dispatch token and a
    # small payload (base64).
    token: NotRequired[str]
    payload: NotRequired[str]
