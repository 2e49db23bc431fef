"""A Dask scheduler whose workers are Kotta jobs.

>>> import dask
>>> from dask_kotta import Kotta, KottaScheduler
>>> konn = Kotta(open('../auth.file').read())
>>> dask.compute(x, scheduler=KottaScheduler(konn, queue='Test', walltime=5))  # doctest: +SKIP

``KottaScheduler(konn)`` is a ``get(dsk, keys, **kwargs)`` callable, so it
plugs in wherever Dask takes a scheduler: ``dask.compute(..., scheduler=s)``,
``x.compute(scheduler=s)``, ``dask.config.set(scheduler=s)``.

Why not one job per task
========================

A Kotta job is durable, isolated and accounted for: it is written to the job
store, claimed under a lease, run in a fresh child process under its walltime
and memory limit, and its result is uploaded to the object store. That costs
about 10 ms of latency and 5-6 ms of CPU per job on a 2-core machine however
small the task (``bench/RESULTS-latency.md``); dask.distributed pays under
1 ms per task. So the unit this scheduler sends is a *fragment*, a piece of the
graph that runs as one job, and the algorithm is about choosing fragments
well and moving as few bytes and requests as possible.

The algorithm
=============

Modules: ``graph.py`` (normalise), ``annotations.py`` (settings),
``plan.py`` (fragments), ``state.py`` (task state), ``remote.py`` (the job's
side), this module (the loop and its I/O).

1. **Normalise** (``graph.py``). Whatever ``get`` receives (a dict of tuples,
   a ``HighLevelGraph``, an optimised expression from ``dask.compute``)
   becomes ``{key: GraphNode}`` from ``dask._task_spec``, culled to what the
   requested keys need. Annotations are read *before* optimisation as well as
   after, because Dask's optimisation drops them (dask#7036); a task that
   Dask fused from parts with different annotations is split back.

2. **Settle each task's job settings** (``annotations.py``): queue, walltime,
   requirements, retries, keep_days, from ``dask.annotate`` or this scheduler's
   defaults; ``resources={'vCPU': 16, 'MEM': '64GB'}`` picks the smallest
   queue of ``konn.queues()`` that fits; ``inputs`` are URLs to stage.

3. **Cut the graph into fragments** (``plan.py``). Roots are split into at
   most ``parallelism`` runs; every other task joins the fragment of its
   dependencies, or the "join" fragment of where its dependencies meet; small
   join fragments are merged into their only successor. Linear chains thus
   fuse into one job, a tree reduction becomes ``parallelism`` jobs plus one,
   and tasks with different settings never share a job.

4. **Run** (this module). The scheduling loop, like ``dask.local``'s:

   - every fragment whose dependencies are all done is *ready*; all ready
     fragments go out in **one** ``submit_specs`` request;
   - **one** ``wait_any`` long-poll watches every running job and returns as
     soon as any of them ends;
   - a finished fragment finishes its tasks (firing callbacks), and each of
     its dependents that has nothing left to wait for becomes ready;
   - until no fragment is left.

   The server runs ready jobs in parallel up to the cluster's capacity.

Data flow
=========

Values never pass through the client on their way between jobs. A job's
result object holds the values *other jobs* read from it (its ``shared``
keys). A job that needs them lists those jobs in its spec's ``deps``; the
runner downloads their results into its private ``.kotta/deps/`` before the
task code runs (the server only serves a dep that belongs to the same user
and is listed in ``deps``). The client downloads only the fragments holding
*requested* keys, and from them only the requested values (``remote.py``):
intermediates stay in the object store, however large. Data written into the
graph goes the other way: a literal over ``literal_threshold`` is uploaded once
(``literals.py``) and staged, as an input, into each job that uses it, instead
of riding in each job's payload.

Files a task leaves for an ``s3://`` place (``__kotta_outputs__``: ``(file, url)``
pairs, one per partition of ``dask_kotta.dataframe.to_parquet``) become its job's
``destinations``: the runner writes them once the job succeeded, with a PUT the
server presigned for that key if the user holds a write grant for it. Before the
first job of a compute the scheduler asks the server about all of them
(``Kotta.check_destinations``), so a missing grant fails the compute before any
work is done. Dask's own ``to_parquet`` tasks are refused (``frames.py``).

Dataframes
==========

Dask's query planning drops ``dask.annotate`` on dataframes before any
scheduler sees the graph. ``frames.py`` notices it was used (around the
operations or the compute), and ``get`` refuses with
``DataFrameAnnotationError`` naming the per-compute setting that works
(``dask.config.set({'kotta.queue': ...})`` or the scheduler's own defaults).

State
=====

Two levels. Fragments: ``waiting`` (on other fragments), ``ready``,
``running`` (by job id), done. Tasks (``state.py``, pure steps): the same
dictionaries as ``dask.local`` (``dependencies``, ``dependents``, ``waiting``,
``waiting_data``, ``ready``, ``running``, ``finished``, ``released``,
``cache``), kept so that Dask's callbacks (``ProgressBar``, ``Profiler``,
any ``Callback``) work unchanged: ``_pretask`` fires for each task of a
fragment when its job is submitted, ``_posttask`` for each when the job
completes, with the task's value if it came back to the client (requested
keys) and ``None`` otherwise, and the job id as the worker id.

Errors
======

A job that fails after its retries (the server re-runs it ``retries`` times)
raises from ``get``: the remote exception, re-raised as an instance of both
``RemoteError`` and its own class, its message naming the task's key and the
job, with the remote traceback. Jobs of the graph still running are then
cancelled and no further fragment is submitted. A job killed for walltime or
memory raises ``JobFailedError`` with the reason.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle
from dask.callbacks import local_callbacks, unpack_callbacks
from dask.local import nested_get
from dask.order import order
from dask.utils import key_split

from .. import defaults as d
from ..errors import (
    ConflictError,
    JobCancelledError,
    JobFailedError,
    KottaError,
    NotFoundError,
    RemoteError,
    ServerUnavailableError,
    remote_error,
)
from ..jobspec import JobSpec, keep_days_value
from ..remote_warnings import emit
from . import frames, remote
from .annotations import (
    JobSettings,
    SettingsResolver,
    refuse_lost,
    settings_from_config,
)
from .graph import Graph, build, foreign_writers
from .literals import DEFAULT_THRESHOLD, Literals, configured_threshold, threshold_bytes
from .plan import Fragment, plan
from .remote import (
    KEY_NOTE,
    REQUESTED_FILE,
    WARNINGS_ATTR,
    WARNINGS_KEY,
    encode,
    fragment_spec,
    run_fragment,
)
from .state import evaluate_local, finish_task, local_keys, start_state, start_tasks

# Fragments run wherever cloudpickle does, even in a `requirements` environment without
# dask or dask-kotta: the worker side travels by value (see remote.py).
cloudpickle.register_pickle_by_value(remote)
# So that `dask.annotate` around dataframe operations, which Dask drops, is refused, not ignored.
frames.install()

if TYPE_CHECKING:
    from ..client.connection import Kotta

Key = Any

#: Most jobs sent in one submit request.
SUBMIT_BATCH = 500
#: Most jobs watched by one ``wait_any`` request (the server's limit).
WAIT_MAX = 10_000
#: Longest the client waits in one ``wait_any`` request, in seconds.
POLL_S = 10.0


@dataclass
class RunStats:
    """What one ``get`` call did, for tests, benchmarks and the curious."""

    tasks: int = 0
    jobs: int = 0
    job_ids: list[str] = field(default_factory=list)
    submit_requests: int = 0
    wait_requests: int = 0
    #: Keys whose values the client downloaded, and how many bytes that took.
    downloaded_keys: list[Key] = field(default_factory=list)
    downloaded_bytes: int = 0
    #: Bytes of the jobs' payloads, all jobs together.
    payload_bytes: int = 0
    #: Large literals stored once instead of copied into payloads (``literals.py``): how many
    #: jobs' references replaced a copy, and what this run uploaded (a stored one is reused).
    literals_referenced: int = 0
    literals_uploaded: int = 0
    literal_bytes_uploaded: int = 0
    seconds: float = 0.0


#: Jobs a graph's independent roots are spread over when the server reports no slots.
DEFAULT_PARALLELISM = 8


class KottaScheduler:
    """A Dask ``get`` function that runs each piece of a graph as a Kotta python job.

    ``queue``, ``walltime`` (minutes), ``requirements`` (requirements.txt text),
    ``retries`` and ``keep_days`` are the defaults for tasks without ``dask.annotate``
    settings. ``keep_days`` is how long each job (its results included) is kept after
    it ends (``0``: for ever; ``None``: the server's ``--keep``): a job's results are
    read by the jobs after it, so keep them longer than the graph takes. ``parallelism`` is how many jobs the independent roots of a graph
    are spread over; by default, the job slots the cluster has for ``queue``
    right now (as the server reports them), or 8 when it reports none. ``fuse=False`` runs every task as its own job. ``max_tasks_per_job``
    caps a fragment's size. ``literal_threshold`` (bytes, or a size like ``'1MiB'``;
    default 1 MiB; ``None``: never) is the size over which a literal of the graph is
    uploaded once and staged into the jobs that use it instead of copied into each
    payload (``literals.py``). For one compute, ``dask.config.set({'kotta.queue': ...,
    'kotta.walltime': ..., 'kotta.requirements': ..., 'kotta.retries': ...,
    'kotta.keep_days': ..., 'kotta.literal-threshold': ...})`` overrides these. See the
    module docstring for the algorithm.
    """

    #: Tells dask_kotta.dask.frames that a scheduler is this one, without importing it.
    __kotta_scheduler__ = True

    def __init__(
        self,
        konn: Kotta,
        queue: str = d.QUEUE,
        walltime: float = 5,
        requirements: str | None = None,
        retries: int = 0,
        *,
        keep_days: float | None = None,
        parallelism: int | None = None,
        fuse: bool = True,
        max_tasks_per_job: int | None = None,
        poll_s: float = POLL_S,
        literal_threshold: int | str | None = DEFAULT_THRESHOLD,
    ):
        if parallelism is not None and parallelism < 1:
            raise ValueError("parallelism must be at least 1")
        self.konn = konn
        self.default = JobSettings(
            queue=queue,
            walltime_min=float(walltime),
            requirements=requirements,
            retries=int(retries),
            keep_days=keep_days_value(keep_days),
        )
        self.parallelism = parallelism
        self.fuse = fuse
        self.max_tasks_per_job = max_tasks_per_job
        self.poll_s = poll_s
        self.literal_threshold = threshold_bytes(literal_threshold)
        self._queues: Mapping[str, Any] | None = None
        #: Statistics of the last ``get`` call.
        self.last_run = RunStats()

    def __repr__(self) -> str:
        s = self.default
        return f"<KottaScheduler {self.konn.url} queue={s.queue} walltime={s.walltime_min:g}>"

    def __deepcopy__(self, memo: dict) -> KottaScheduler:
        # Code that deep-copies dask.config (distributed's gen_cluster does) copies a scheduler
        # set there; its connection is never copied (it holds the token), so neither is it.
        return self

    def effective_parallelism(self) -> int:
        """``parallelism`` if given, else the default queue's slots on the cluster (or 8)."""
        if self.parallelism is not None:
            return self.parallelism
        return int(self.queues().get(self.default.queue, {}).get("slots") or DEFAULT_PARALLELISM)

    def queues(self) -> Mapping[str, Any]:
        """The server's queues and limits (asked once per scheduler)."""
        if self._queues is None:
            self._queues = self.konn.queues()
        return self._queues

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return self.get(dsk, keys, **kwargs)

    def get(self, dsk: Any, keys: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        """Compute ``keys`` (a key, or nested lists of keys) of the graph ``dsk``.

        Returns the value, or nested tuples of values mirroring nested lists of
        keys, as every Dask ``get`` does. Extra keyword arguments given to
        ``dask.compute`` (``num_workers``...) are accepted and ignored.
        """
        run = _Run(self, callbacks)
        try:
            return run.get(dsk, keys)
        finally:
            self.last_run = run.stats


# -- one get() call: the I/O loop ----------------------------------------------------------


class _Run:
    def __init__(self, sched: KottaScheduler, callbacks: Any):
        self.sched = sched
        self.konn = sched.konn
        self.callbacks = callbacks
        self.stats = RunStats()
        self.running: dict[str, Fragment] = {}
        self.literals = Literals(self.konn, configured_threshold(sched.literal_threshold))
        #: The settings of tasks without annotations: the scheduler's, or dask.config's kotta.*.
        self.default = sched.default
        #: Ids of the remote warnings already re-emitted (one can come by several paths).
        self.warned: set[str] = set()

    def get(self, dsk: Any, keys: Any) -> Any:
        t0 = time.perf_counter()
        # (dask.compute hands over an expression; a dict comes from elsewhere, not after a
        # collections_to_expr of this thread, so whatever it noted is not about this graph)
        lost = frames.take_lost() if not isinstance(dsk, Mapping) else None
        resolver = SettingsResolver(self.sched.default, self.sched.queues)
        self.default = settings_from_config(resolver)
        if lost:
            refuse_lost(lost, self.default)
        graph, flat = build(dsk, keys)
        writers = foreign_writers(graph.nodes)
        if writers:
            frames.refuse_dask_writes(writers)
        destinations = sorted({url for pairs in graph.task_outputs.values() for _, url in pairs})
        if destinations:
            # Every place this compute writes must be granted before any job runs: a refusal
            # after some rounds would leave a half-written dataset and spent work behind.
            self.konn.check_destinations(destinations)
        requested = set(flat)
        cache = evaluate_local(graph)
        remote = [k for k in graph.nodes if k not in graph.local]
        self.stats.tasks = len(remote)
        with local_callbacks(self.callbacks) as callbacks:
            _, _, pretask_cbs, posttask_cbs, _ = unpack_callbacks(callbacks)
            started = []
            state: dict[str, Any] = {}
            succeeded = False
            try:
                for cb in callbacks:
                    if cb[0]:
                        cb[0](graph.nodes)
                    started.append(cb)
                frags = self._plan(graph, remote, requested)
                state = start_state(graph, remote, cache)
                for _, start_state_cb, _, _, _ in callbacks:
                    if start_state_cb:
                        start_state_cb(graph.nodes, state)
                self._loop(graph, frags, state, requested, pretask_cbs, posttask_cbs)
                succeeded = True
            finally:
                if not succeeded:
                    self._cancel_running()
                for _, _, _, _, finish in started:
                    if finish:
                        finish(graph.nodes, state, not succeeded)
                self.stats.seconds = time.perf_counter() - t0
        return nested_get(keys, cache)

    def _plan(self, graph: Graph, remote: list[Key], requested: set[Key]) -> list[Fragment]:
        s = self.sched
        resolver = SettingsResolver(self.default, s.queues)
        if not remote:
            return []
        priority = order(graph.nodes)

        def settings(k: Key) -> tuple[JobSettings, tuple[str, ...]]:
            out, urls = resolver.resolve(k, graph.annotations.get(k))
            extra = graph.task_inputs.get(k)
            return out, (urls + extra if extra else urls)

        return plan(
            remote, graph.deps, priority.__getitem__, settings, requested,
            s.effective_parallelism(), fuse=s.fuse, max_tasks=s.max_tasks_per_job,
        )  # fmt: skip

    def _loop(self, graph, frags, state, requested, pretask_cbs, posttask_cbs) -> None:
        waiting = {f.index: len(f.needs) for f in frags}
        ready = [f for f in frags if not f.needs]
        job_of: dict[int, str] = {}
        while ready or self.running:
            if ready:
                for i in range(0, len(ready), SUBMIT_BATCH):
                    batch = ready[i : i + SUBMIT_BATCH]
                    self._submit(graph, batch, job_of)
                    for f in batch:
                        start_tasks(state, f.keys)
                        for key in f.keys:
                            for cb in pretask_cbs:
                                cb(key, graph.nodes, state)
                ready = []
            self.stats.wait_requests += 1
            # (the server watches at most 10,000 jobs per request; any of them ending will do)
            watch = list(self.running)[:WAIT_MAX]
            records = self.konn.wait_any(watch, timeout=self.sched.poll_s)
            for rec in records:
                if rec["status"] not in d.TERMINAL_STATUSES or rec["id"] not in self.running:
                    continue
                f = self.running.pop(rec["id"])
                if rec["status"] != d.COMPLETED:
                    raise self._error(rec, f)
                if f.returns:
                    state["cache"].update(self._download(rec, f))
                for key in f.keys:
                    finish_task(state, key, requested)
                    for cb in posttask_cbs:
                        cb(key, state["cache"].get(key), graph.nodes, state, rec["id"])
                for g in sorted(f.dependents):
                    waiting[g] -= 1
                    if not waiting[g]:
                        ready.append(frags[g])

    def _submit(self, graph: Graph, batch: list[Fragment], job_of: dict[int, str]) -> None:
        from ..client.serialize import dumps_call, versions

        client = versions()
        specs: list[JobSpec] = []
        payloads: list[bytes] = []
        refs: list[list[str]] = []
        lits = self.literals
        for f in batch:
            run = local_keys(graph, f.keys) + f.keys
            spec = fragment_spec(
                nodes=[(k, encode(graph.nodes[k], lits), tuple(graph.deps(k))) for k in run],
                reads={job_of[e]: keys for e, keys in f.needs.items()},
                shared=f.shared,
                returns=f.returns,
            )
            payloads.append(dumps_call(run_fragment, (spec,), {}))
            refs.append(lits.take_refs())
        lits.upload()  # what these jobs read that is not stored yet, before they can start
        for f, literal_refs in zip(batch, refs, strict=True):
            inputs = list(dict.fromkeys([*f.inputs, *map(lits.url, literal_refs)]))
            s = f.settings
            specs.append(
                JobSpec.parse(
                    {
                        "jobtype": "python",
                        "name": _job_name(f.keys),
                        "queue": s.queue,
                        "walltime_min": s.walltime_min,
                        "retries": s.retries,
                        "keep_days": s.keep_days,
                        "requirements": s.requirements or None,
                        "inputs": inputs,
                        "outputs": [REQUESTED_FILE] if f.returns and f.shared else [],
                        "destinations": _destinations(graph, f.keys),
                        "deps": [job_of[e] for e in f.needs],
                        "annotations": {
                            **s.record(),
                            "dask": {"tasks": len(f.keys), "keys": [str(k) for k in f.keys[:20]]},
                        },
                        "client": client,
                        "idempotency_key": uuid.uuid4().hex,
                    }
                )
            )
        self.stats.submit_requests += 1
        self.stats.payload_bytes += sum(map(len, payloads))
        self.stats.literals_referenced = self.literals.referenced
        self.stats.literals_uploaded = self.literals.uploaded
        self.stats.literal_bytes_uploaded = self.literals.uploaded_bytes
        jobs = self.konn.submit_specs(specs, payloads)
        for f, job in zip(batch, jobs, strict=True):
            job_of[f.index] = job["id"]
            self.running[job["id"]] = f
            self.stats.job_ids.append(job["id"])
        self.stats.jobs += len(batch)

    def _download(self, rec: dict[str, Any], f: Fragment) -> dict[Key, Any]:
        """The requested values of a completed fragment, and nothing else."""
        from ..client.serialize import loads_result

        job_id = rec["id"]
        if f.shared:
            data = self.konn.request("GET", f"/api/v1/jobs/{job_id}/files/{REQUESTED_FILE}").content
            values = cloudpickle.loads(data)
        else:
            data = self.konn.result_bytes(job_id)
            values = loads_result(data, job_id)
        found = values.pop(WARNINGS_KEY, None)
        self.stats.downloaded_bytes += len(data)
        self.stats.downloaded_keys.extend(values)
        emit(found, self.warned, _where)
        return values

    def _error(self, rec: dict[str, Any], f: Fragment) -> KottaError:
        """The exception to raise for a fragment's job that did not complete."""
        from ..client.serialize import loads_result

        job_id = rec["id"]
        what = _summary(f.keys)
        if rec["status"] == d.CANCELLED:
            return JobCancelledError(
                f"Kotta job {job_id} running dask {what} was cancelled", job_id
            )
        if rec.get("has_result"):
            try:
                loads_result(self.konn.result_bytes(job_id), job_id)
            except RemoteError as e:
                key = _failed_key(e, f)
                prefix = f"{e.remote_type}: "
                message = e.args[0][len(prefix) :] if e.args[0].startswith(prefix) else e.args[0]
                err = remote_error(
                    e.remote_exception, e.remote_type,
                    f"{message} [dask task {key!r}, Kotta job {job_id}]", e.remote_traceback, job_id,
                )  # fmt: skip
                err.key = key  # type: ignore[attr-defined]
                # The task's warnings first, as they would have come before its exception.
                try:
                    emit(getattr(e.remote_exception, WARNINGS_ATTR, None), self.warned, _where)
                except Warning as w:  # a filter made one an error: it is raised, from the task's
                    raise w from err
                return err
            except KottaError as e:
                return e
        err = JobFailedError(
            f"dask {what} failed on Kotta job {job_id}: {rec.get('reason')}", job_id
        )
        err.key = f.keys[0]  # type: ignore[attr-defined]
        return err

    def _cancel_running(self) -> None:
        # A server that stayed away for the connection's whole retry window would make each
        # cancel wait out the window again: then the error being raised is all there is to do.
        if not isinstance(sys.exception(), ServerUnavailableError):
            for job_id in list(self.running):
                try:
                    self.konn.cancel_job(job_id)
                except (ConflictError, NotFoundError):
                    pass  # it ended meanwhile
                except ServerUnavailableError:
                    break  # (see above)
                except KottaError:
                    pass  # best effort: the error being raised matters more
        self.running.clear()


def _destinations(graph: Graph, keys: list[Key]) -> dict[str, str]:
    """``{file: s3:// place}`` the tasks ``keys`` of one job write (``__kotta_outputs__``)."""
    out: dict[str, str] = {}
    for k in keys:
        for name, url in graph.task_outputs.get(k, ()):
            out[name] = url
    return out


def _failed_key(e: RemoteError, f: Fragment) -> Key:
    notes = getattr(e.remote_exception, "__notes__", None) or []
    text = "\n".join([*notes, e.remote_traceback])
    for line in reversed(text.splitlines()):
        if line.startswith(KEY_NOTE):
            wanted = line[len(KEY_NOTE) :]
            for k in f.keys:
                if repr(k) == wanted:
                    return k
            return wanted
    return f.keys[0] if len(f.keys) == 1 else f.keys


def _where(rec: dict[str, Any]) -> str:
    return f"dask task {rec['key']!r}"


def _summary(keys: list[Key]) -> str:
    if len(keys) == 1:
        return f"task {keys[0]!r}"
    return f"tasks {keys[0]!r} ... {keys[-1]!r} ({len(keys)} tasks)"


def _job_name(keys: list[Key]) -> str:
    names = list(dict.fromkeys(key_split(k) for k in keys))
    text = "dask " + ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    return text[:200] + f" ({len(keys)} tasks)" if len(keys) > 1 else text[:250]
