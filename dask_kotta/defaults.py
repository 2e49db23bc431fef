"""Constants in one place, each with its unit."""

from __future__ import annotations

#: Job statuses, in lifecycle order. ``unsubmitted`` exists only on the client.
UNSUBMITTED = "unsubmitted"
PENDING = "pending"
STAGING_INPUTS = "staging_inputs"
PROCESSING = "processing"
STAGING_OUTPUTS = "staging_outputs"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

ACTIVE_STATUSES = (STAGING_INPUTS, PROCESSING, STAGING_OUTPUTS)
TERMINAL_STATUSES = (COMPLETED, FAILED, CANCELLED)
SERVER_STATUSES = (PENDING, *ACTIVE_STATUSES, *TERMINAL_STATUSES)

JOBTYPES = ("script", "python")

#: The reasons a runner reports for a job it killed at a limit; the server adds to each the
#: limit and the queue that allows more (``server/queues.limit_advice``).
KILLED_WALLTIME = "walltime exceeded"
KILLED_MEMORY = "memory limit exceeded"

#: Default TCP port of ``dask-kotta up`` / ``server``.
PORT = 8765
#: Default data directory (SQLite file, object store) of the embedded service.
DATA_DIR = ".kotta"
#: Default credentials file written by ``up``.
AUTH_FILE = "auth.file"
#: Default walltime of a ``KottaJob``, in minutes (documented).
WALLTIME_MIN = 300
#: Default queue.
QUEUE = "Test"

#: A claimed job's lease, in seconds: a runner that does not heartbeat within it loses the job.
LEASE_S = 20.0
#: Runner heartbeat interval, in seconds. Also how fast a cancel reaches a running job.
HEARTBEAT_S = 1.0
#: Times a job whose runner vanished is put back to pending before it fails.
MAX_REQUEUES = 3
#: Days an ended job (its record and files) is kept before it is deleted; 0: for ever.
KEEP_DAYS = 30.0
#: The longest keep time a job may ask for (``keep_days``), in days: 100 years. Longer is a
#: mistake (a job kept for ever says ``keep_days=0``).
MAX_JOB_KEEP_DAYS = 36525.0
#: Unfinished uploads (S3 multipart, interrupted local writes) older than this are dropped.
STALE_UPLOAD_S = 86400.0
#: How often the server deletes the jobs past their keep time, in seconds.
SWEEP_S = 600.0
#: How often the server looks for expired leases, in seconds.
REAPER_S = 1.0
#: Every how many of those it asks the scheduler which workers are gone (their jobs requeue).
ORPHAN_CHECK_TICKS = 2
#: After its start the server waits this long before it first takes back the jobs of gone
#: workers: the ends those workers kept on disk reach it first (couriers retry every 2 s).
ORPHAN_GRACE_S = 5.0
#: Longest single long-poll wait the server grants, in seconds.
LONGPOLL_MAX_S = 30.0
#: How long a runner keeps retrying an unreachable server, in seconds.
RUNNER_PATIENCE_S = 180.0

#: Largest payload (pickled function+arguments, or script) accepted, in bytes.
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
#: Small enough to travel inline, in bytes: a python job's result inside its record, a payload
#: inside a slot's claim and a file inside its finish report; outputs all this small (and all
#: sent through the server) are sent one by one from the runner's own thread.
INLINE_MAX_BYTES = 1024 * 1024
#: The most jobs one slot request claims (see ``runner/slots.py``).
MAX_CLAIM = 32
#: Jobs one user may have pending at once (all queues), unless the operator says otherwise.
MAX_PENDING = 100_000
#: Largest upload (``POST /api/v1/uploads``) one user may start, in bytes (``--max-upload``).
MAX_UPLOAD_BYTES = 5 * 1024**3
#: Bytes one user may keep in the object store: uploads, payloads, outputs (``--max-storage``).
MAX_STORAGE_BYTES = 100 * 1024**3
#: How long the server trusts its listing of a user's objects for the storage quota, in
#: seconds (``DASK_KOTTA_USAGE_RECOUNT_S``); what it accepted since is added to it.
USAGE_RECOUNT_S = 30.0
#: How long a download link (``POST /api/v1/jobs/{id}/links``) opens without a token, in
#: seconds (``--link-ttl``).
LINK_TTL_S = 600.0
#: Child-process poll interval for walltime/memory/cancel checks, in seconds.
MONITOR_S = 0.05

#: Connect and read timeouts of client HTTP calls, in seconds.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
#: How long a client call that is safe to repeat keeps retrying an unreachable or unavailable
#: server (a restart takes seconds), in seconds from the first failure.
RETRY_WINDOW_S = 60.0
#: The ``Retry-After`` the server sends with a 503 when its job database is unreachable, in seconds.
DB_RETRY_AFTER_S = 2

#: Object names the service gives a job's internal files, under the job's prefix.
PAYLOAD_OBJECT = ".kotta/payload.pkl"
RESULT_OBJECT = ".kotta/result.pkl"
#: The live log of a running job's stream (``stdout``, ``stderr``): what reached the server so far.
LIVE_LOG_OBJECT = ".kotta/live-{stream}.log"

#: A live log keeps a stream's first this many bytes ...
LIVE_LOG_HEAD_BYTES = 256 * 1024
#: ... and its last this many; what lies between is cut, and the log says so where it was.
LIVE_LOG_TAIL_BYTES = 1024 * 1024
#: A running job's output is first sent this long after it started (a shorter job sends none),
#: then at most every ``LIVE_LOG_EVERY_S`` while it grows, in seconds.
LIVE_LOG_FIRST_S = 1.0
LIVE_LOG_EVERY_S = 1.0
