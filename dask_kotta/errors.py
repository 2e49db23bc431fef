"""The one exception hierarchy of dask-kotta.

::

    KottaError
    ├── ConfigError            bad credentials, bad queue config, bad flags
    │   └── AlreadyServedError     another live service serves this data dir (names its URL)
    ├── SerializationError     a function or argument cannot be pickled (client side)
    ├── UnsafePathError        a path that would escape its job's directory or prefix
    ├── ContainmentError       a worker cannot contain a job that must be contained
    ├── SchemaError            the job database's schema is not this code's: older (the
    │                              message names the upgrade command) or newer
    ├── APIError               the server answered 4xx/5xx: ``.detail`` says why, ``.status``
    │   │                          is the HTTP status (shown by ``str()`` only)
    │   ├── AuthenticationError    401: unknown or malformed token
    │   ├── ForbiddenError         403: a valid token, but not allowed this (another user's
    │   │                          files, an ungranted bucket, a service that is not yours)
    │   ├── NotFoundError          404: no such job (or not yours)
    │   ├── InvalidRequestError    400/422: the request names something invalid
    │   ├── ConflictError          409: the job is not in a state that allows this
    │   ├── PayloadTooLargeError   413: a payload or upload is over the server's limit, or
    │   │                          an upload's body over the size it declared
    │   └── LimitExceededError     429: a per-user limit (pending jobs, storage) is reached;
    │                              the message names it and how to change it
    ├── ServerUnavailableError the server cannot be reached; the message names the URL (a 502/
    │                          503/504 is an ``APIError``; the client retries both for a while)
    └── JobError               something about a job's outcome
        ├── JobFailedError         the job ended ``failed`` (reason in the message)
        ├── JobCancelledError      the job ended ``cancelled``
        ├── JobTimeoutError        waiting gave up before the job ended
        ├── ResultError            the result could not be unpickled here
        └── RemoteError            the remote function raised; see ``remote_traceback``

The server raises these same classes; its one exception handler answers
``{"detail": exc.detail}`` with ``exc.status``, and the client turns the answer
back into the class for that status (``error_for_status``).

A ``RemoteError`` raised to the caller is also an instance of the remote
exception's own class where that class can be subclassed, so
``except ZeroDivisionError`` works across the wire; except for ``SystemExit``,
``KeyboardInterrupt`` and ``GeneratorExit`` (``NOT_RERAISED_AS_ITSELF``: why there).
"""

from __future__ import annotations


class KottaError(Exception):
    """Base of every error raised by dask-kotta."""


class ConfigError(KottaError):
    """The configuration (credentials, queues, flags) is invalid."""


class AlreadyServedError(ConfigError):
    """A live ``up`` or ``server`` already serves the data directory; the message names its
    URL and pid (``server/served.py``)."""


class SerializationError(KottaError):
    """A function, its arguments or its result could not be pickled."""


class UnsafePathError(KottaError, ValueError):
    """A path would escape the directory or prefix it belongs to."""


class ContainmentError(KottaError):
    """A job must run contained and this worker cannot contain it; the message says why."""


class SchemaError(KottaError):
    """The job database is at a schema revision this code does not run on; the message says
    which and what to do (upgrade it, or run the newer dask-kotta that made it)."""


class APIError(KottaError):
    """The server refused a request: ``detail`` says why, ``status`` is the HTTP status code.

    ``str()`` shows both (``"no job 'x' (HTTP 404)"``); the server answers with
    ``detail`` alone, and a caller that shows the reason to a person uses it too.
    """

    status: int = 500
    #: For a 503: the seconds the server asked the client to wait (its ``Retry-After``), if it did.
    retry_after: float | None = None

    def __init__(self, detail: str, status: int | None = None):
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status})"

    def __reduce__(self) -> tuple[type[APIError], tuple[str, int]]:
        # Keep a status that differs from the class's (an APIError for a 503) across pickling.
        return (type(self), (self.detail, self.status))


class AuthenticationError(APIError):
    """The token is missing, malformed or unknown to the server."""

    status = 401


class ForbiddenError(APIError):
    """The token is valid, but its user may not do this (403).

    Not a subclass of ``AuthenticationError``: that one means "who are you?"
    (401, make new credentials), while here the server knows the user and
    refuses the request itself (an input in another user's part of the store,
    an ``s3://`` bucket no grant covers, a service that serves only its
    operator). A caller that re-authenticates on ``AuthenticationError`` must
    not do so for this. Earlier versions raised a 403 as ``AuthenticationError``,
    against the documented tree; code that must run with both catches ``APIError``.
    """

    status = 403


class NotFoundError(APIError):
    """No such job or object (another user's job is not found either)."""

    status = 404


class InvalidRequestError(APIError):
    """The request names an invalid queue, walltime, path or job type."""

    status = 400


class ConflictError(APIError):
    """The job is not in a state that allows the operation."""

    status = 409


class PayloadTooLargeError(APIError):
    """An upload is larger than the server accepts."""

    status = 413


class LimitExceededError(APIError):
    """A per-user limit is reached (jobs pending at once, bytes kept in the store); the message
    names the limit and what to do. Not retried: it holds until some of the user's jobs start
    or are cancelled, or the user deletes jobs or uploads."""

    status = 429


class ServerUnavailableError(KottaError):
    """The Kotta server could not be reached."""


class JobError(KottaError):
    """Base for errors about a job's outcome."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id


class JobFailedError(JobError):
    """The job ended in the ``failed`` state."""


class JobCancelledError(JobError):
    """The job was cancelled."""


class JobTimeoutError(JobError, TimeoutError):
    """Waiting for the job gave up before the job ended."""


class ResultError(JobError):
    """The job's result could not be unpickled by the client."""


class RemoteError(JobError):
    """The remote function raised an exception.

    ``remote_type`` names the remote exception class, ``remote_traceback`` is
    its formatted traceback, and ``remote_exception`` the unpickled exception
    when it could be unpickled here.
    """

    def __init__(
        self,
        message: str,
        job_id: str | None = None,
        remote_type: str = "",
        remote_traceback: str = "",
        remote_exception: BaseException | None = None,
    ):
        super().__init__(message, job_id)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.remote_exception = remote_exception

    #: The part of ``remote_traceback`` that ``str()`` shows: its frames, without the last
    #: exception's own line, which is this error's (set by the client; None: all of it).
    remote_frames: str | None = None

    def __str__(self) -> str:
        text = self.args[0] if self.args else ""
        shown = self.remote_traceback if self.remote_frames is None else self.remote_frames
        if shown:
            text += f"\n\nRemote traceback (job {self.job_id}):\n{shown}"
        return text

    def __reduce__(self):
        return (
            RemoteError,
            (
                self.args[0] if self.args else "",
                self.job_id,
                self.remote_type,
                self.remote_traceback,
            ),
        )


#: Remote exceptions re-raised as a plain ``RemoteError``, not as their own class (with
#: their subclasses): on the client an instance of one would act on the client's own process.
#: ``SystemExit`` ends the interpreter without a traceback (a task's ``sys.exit(0)`` would end
#: the caller's script as a success), ``KeyboardInterrupt`` is what Ctrl-C raises here (a
#: wait would take it for the user's and cancel its jobs; a script would stop with status
#: 130 and no traceback), and ``GeneratorExit`` is what ``close()`` throws into a generator
#: (one catching it would take a remote failure for being closed).
NOT_RERAISED_AS_ITSELF: tuple[type[BaseException], ...] = (
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
)


def remote_error(
    exc: BaseException | None, type_name: str, message: str, tb: str, job_id: str
) -> RemoteError:
    """Build the error to raise for a remote exception.

    Where the remote exception unpickled and its class can be subclassed, the
    result is an instance of both ``RemoteError`` and that class, whose name
    Python prints before the message: the message is then the remote one alone
    (``KeyError: 'missing'``, not ``KeyError: KeyError: 'missing'``). A plain
    ``RemoteError``'s message starts with the remote type's name. That holds for a
    ``BaseException`` of the user's own too (then it is an ``Exception`` as well, as
    every ``RemoteError`` is), but not for ``NOT_RERAISED_AS_ITSELF``: those come as a
    plain ``RemoteError`` with a note saying why, the original in ``remote_exception``.
    """
    if isinstance(exc, NOT_RERAISED_AS_ITSELF):
        text = f"{type_name}: {message}" if message else type_name
        err = RemoteError(text, job_id, type_name, tb, exc)
        err.add_note(
            f"The job raised {type_name}; it is raised here as RemoteError, not as "
            f"{type_name}, which would act on this process (dask_kotta.errors.NOT_RERAISED_AS_ITSELF says why)."
        )
        for note in getattr(exc, "__notes__", None) or ():
            err.add_note(note)
        return err
    if exc is not None:
        try:
            cls = type(
                type(exc).__name__, (RemoteError, type(exc)), {"__module__": type(exc).__module__}
            )
            err = cls.__new__(cls)
            RemoteError.__init__(err, message, job_id, type_name, tb, exc)
            err.args = (message,)
            notes = getattr(exc, "__notes__", None)
            if notes:  # printed under the message, as they would be for the exception itself
                err.__notes__ = list(notes)
            return err
        except TypeError:
            pass
    text = f"{type_name}: {message}" if message else type_name
    return RemoteError(text, job_id, type_name, tb, exc)


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: LimitExceededError,
    422: InvalidRequestError,
}


def error_for_status(status: int, detail: str) -> APIError:
    """The ``APIError`` subclass instance for an HTTP status and its detail."""
    cls = _BY_STATUS.get(status, APIError)
    return cls(detail, status)
