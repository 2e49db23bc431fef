"""What a Dask task runs with: its job settings, read from ``dask.annotate``.

Recognised annotations (everything else, e.g. distributed's ``priority`` or
``workers``, is accepted and ignored)::

    queue         'Test' | 'Prod' | any queue of the server
    walltime      minutes (fractions allowed)
    requirements  requirements.txt text: the job runs in that environment
    retries       how many times a failing job is run again
    keep_days     days the job is kept after it ends (0: for ever; absent: the server's)
    resources     {'vCPU': 16, 'MEM': '64GB'}: the smallest queue that fits
    inputs        URLs staged into the job's working directory
    fuse          False: this task runs in a job of its own

Precedence: an explicit ``queue`` annotation, then the queue picked by
``resources``, then the scheduler's default. Tasks whose settings differ never
share a job, so each job record says exactly what its tasks ran with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from dask.utils import format_bytes, parse_bytes

from ..errors import ConfigError
from ..jobspec import keep_days_value
from ..urls import NoFileNameError, staged_name

#: Names a ``resources`` annotation may use, case-insensitively, and what they mean.
_CPU_NAMES = {"vcpu", "vcpus", "cpu", "cpus"}
_MEM_NAMES = {"mem", "memory"}


class AnnotationError(ConfigError, ValueError):
    """A task's annotation names an unknown queue, a bad walltime or an unknown resource."""


class NoQueueFitsError(AnnotationError):
    """No queue of the server is large enough for a task's ``resources`` annotation."""


class DataFrameAnnotationError(AnnotationError):
    """``dask.annotate`` was used around dataframe operations, whose annotations Dask drops.

    ``lost`` holds the annotations that would not have reached any job.
    """

    def __init__(self, message: str, lost: Mapping[str, Any]):
        super().__init__(message)
        self.lost = dict(lost)


#: ``dask.config`` keys of per-compute settings, under ``kotta.``, and the annotation each sets.
CONFIG_KEYS = ("queue", "walltime", "requirements", "retries", "keep_days")


def config_overrides() -> dict[str, Any]:
    """The per-compute settings of ``dask.config.set({'kotta.queue': ..., ...})``."""
    import dask.config

    conf = dask.config.get("kotta", default=None) or {}
    if not isinstance(conf, Mapping):
        raise AnnotationError(f"dask.config 'kotta' must be a mapping of settings, got {conf!r}")
    unknown = sorted(
        str(k) for k in conf if str(k).replace("-", "_") not in (*CONFIG_KEYS, "literal_threshold")
    )
    if unknown:
        raise AnnotationError(
            f"dask.config 'kotta' has unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(CONFIG_KEYS)}, literal_threshold"
        )
    return {
        k.replace("-", "_"): v
        for k, v in conf.items()
        if k.replace("-", "_") in CONFIG_KEYS and v is not None
    }


def settings_from_config(resolver: SettingsResolver) -> JobSettings:
    """The scheduler's defaults with ``dask.config``'s ``kotta.*`` settings applied, checked
    as annotations are."""
    overrides = config_overrides()
    if not overrides:
        return resolver.default
    label = "kotta-config"
    try:
        settings, _ = resolver.resolve(label, overrides)
    except AnnotationError as e:
        raise AnnotationError(
            str(e)
            .replace(f"task {label!r} is annotated with", "dask.config kotta.* names")
            .replace(f"task {label!r}", "dask.config kotta.*")
        ) from None
    return settings


def refuse_lost(lost: Mapping[str, Any], default: JobSettings) -> None:
    """Raise ``DataFrameAnnotationError`` unless each lost annotation is what the compute
    runs with anyway (then nothing is ignored)."""
    runs_with = {
        "queue": default.queue,
        "walltime": default.walltime_min,
        "requirements": default.requirements,
        "retries": default.retries,
        "keep_days": default.keep_days,
    }
    ignored = {}
    for name, value in lost.items():
        have = runs_with.get(name, _MISSING)
        try:
            same = have is not _MISSING and (
                float(value) == float(have) if name == "walltime" else value == have
            )
        except (TypeError, ValueError):
            same = False
        if not same:
            ignored[name] = value
    if not ignored:
        return
    shown = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
    settable = {k: v for k, v in ignored.items() if k in CONFIG_KEYS}
    as_config = ", ".join(f"'kotta.{k}': {v!r}" for k, v in settable.items())
    as_args = ", ".join(f"{k}={v!r}" for k, v in settable.items())
    advice = (
        f"set them for the whole compute instead: "
        f"`with dask.config.set({{{as_config}}}): ....compute(scheduler=sched)`, or "
        f"`KottaScheduler(konn, {as_args})`"
        if settable
        else "give them to the tasks of a delayed, bag or array graph instead"
    )
    others = sorted(set(ignored) - set(settable))
    if settable and others:
        advice += f" ({', '.join(others)} cannot be set per compute)"
    raise DataFrameAnnotationError(
        f"dask.annotate({shown}) was used around dataframe operations, but Dask's query "
        "planning drops annotations on dataframes, so they would reach no Kotta job; "
        f"{advice}. (A setting that equals what the compute runs with anyway is accepted.)",
        ignored,
    )


_MISSING = object()


@dataclass(frozen=True)
class JobSettings:
    """The settings one Kotta job runs with; tasks share a job only if these are equal."""

    queue: str
    walltime_min: float
    requirements: str | None = None
    retries: int = 0
    #: Days the job is kept after it ends (0: for ever); None: the server's ``--keep``.
    keep_days: float | None = None
    #: The ``resources`` annotation, normalised to ``(("MEM", bytes), ("vCPU", n))``.
    resources: tuple[tuple[str, float], ...] = ()
    #: False: the task runs in a job of its own and nothing is fused into it.
    fuse: bool = True

    def record(self) -> dict[str, Any]:
        """The JSON-safe summary stored in the job's ``annotations``."""
        out: dict[str, Any] = {
            "queue": self.queue,
            "walltime": self.walltime_min,
            "retries": self.retries,
        }
        if self.requirements:
            out["requirements"] = self.requirements
        if self.keep_days is not None:
            out["keep_days"] = self.keep_days
        if self.resources:
            out["resources"] = {
                k: (format_bytes(int(v)) if k == "MEM" else v) for k, v in self.resources
            }
        if not self.fuse:
            out["fuse"] = False
        return out


class SettingsResolver:
    """Turns a task's annotations into its ``JobSettings`` and its input URLs.

    ``queues`` is called at most once, and only when an annotation needs the
    server's queue limits (``resources``, a ``queue``, or a ``walltime``).
    """

    def __init__(
        self,
        default: JobSettings,
        queues: Callable[[], Mapping[str, Mapping[str, Any]]],
    ):
        self.default = default
        self._queues_fn = queues
        self._queues: Mapping[str, Mapping[str, Any]] | None = None
        self._cache: dict[Any, tuple[JobSettings, tuple[str, ...]]] = {}

    @property
    def queues(self) -> Mapping[str, Mapping[str, Any]]:
        if self._queues is None:
            self._queues = self._queues_fn()
        return self._queues

    def resolve(
        self, key: Any, annotations: Mapping[str, Any] | None
    ) -> tuple[JobSettings, tuple[str, ...]]:
        """``(settings, inputs)`` of one task; errors name the task's key."""
        if not annotations:
            return self.default, ()
        try:
            cache_key: Any = _freeze(annotations)
            hit = self._cache.get(cache_key)
        except TypeError:  # unhashable annotation values: resolve every time
            cache_key, hit = None, None
        if hit is not None:
            return hit
        out = self._resolve(key, annotations)
        if cache_key is not None:
            self._cache[cache_key] = out
        return out

    def _resolve(self, key: Any, ann: Mapping[str, Any]) -> tuple[JobSettings, tuple[str, ...]]:
        d = self.default
        resources = _normalise_resources(key, ann.get("resources"))
        queue = ann.get("queue")
        if queue is None:
            queue = self.smallest_fitting(key, resources) if resources else d.queue
        elif queue not in self.queues:
            raise AnnotationError(
                f"task {key!r} is annotated with queue {queue!r}; the server's queues are "
                + ", ".join(self.queues)
            )
        walltime = ann.get("walltime", d.walltime_min)
        try:
            walltime = float(walltime)
        except (TypeError, ValueError):
            raise AnnotationError(
                f"task {key!r}: walltime {walltime!r} is not a number of minutes"
            ) from None
        if not walltime > 0:
            raise AnnotationError(f"task {key!r}: walltime must be > 0 minutes, got {walltime:g}")
        if "walltime" in ann or "queue" in ann or resources:
            limit = float(self.queues[queue].get("max_walltime_min", float("inf")))
            if walltime > limit:
                raise AnnotationError(
                    f"task {key!r}: walltime {walltime:g} min is over queue {queue}'s "
                    f"maximum of {limit:g} min"
                )
        retries = ann.get("retries", d.retries)
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
            raise AnnotationError(
                f"task {key!r}: retries must be an integer 0..100, got {retries!r}"
            )
        try:
            keep_days = keep_days_value(ann.get("keep_days", d.keep_days))
        except ValueError as e:
            raise AnnotationError(f"task {key!r}: {e}") from None
        requirements = ann.get("requirements", d.requirements)
        if requirements is not None and not isinstance(requirements, str):
            raise AnnotationError(f"task {key!r}: requirements must be requirements.txt text")
        settings = JobSettings(
            queue=queue,
            walltime_min=walltime,
            requirements=requirements or None,
            retries=retries,
            keep_days=keep_days,
            resources=resources,
            fuse=bool(ann.get("fuse", d.fuse)),
        )
        return settings, _inputs(key, ann.get("inputs"))

    def smallest_fitting(self, key: Any, resources: tuple[tuple[str, float], ...]) -> str:
        """The smallest queue (fewest vCPUs, then least memory) that fits ``resources``."""
        need = dict(resources)
        cpus, mem = need.get("vCPU", 0), need.get("MEM", 0)
        sized = sorted(
            self.queues.items(),
            key=lambda q: (q[1].get("vcpus", 0), q[1].get("memory_bytes", 0)),
        )
        for name, q in sized:
            if q.get("vcpus", 0) >= cpus and q.get("memory_bytes", 0) >= mem:
                return name
        name, q = sized[-1]
        wanted = ", ".join(
            f"{format_bytes(int(v)) if k == 'MEM' else f'{v:g}'} {k}" for k, v in resources
        )
        raise NoQueueFitsError(
            f"no queue fits the resources of task {key!r} ({wanted}): the largest queue is {name} "
            f"with {q.get('vcpus')} vCPU and {format_bytes(int(q.get('memory_bytes', 0)))}"
        )


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    hash(value)
    return value


def _normalise_resources(key: Any, res: Any) -> tuple[tuple[str, float], ...]:
    if not res:
        return ()
    if not isinstance(res, Mapping):
        raise AnnotationError(
            f"task {key!r}: resources must be a dict like {{'vCPU': 4, 'MEM': '8GB'}}"
        )
    out: dict[str, float] = {}
    for name, value in res.items():
        low = str(name).lower()
        if low in _CPU_NAMES:
            try:
                out["vCPU"] = float(value)
            except (TypeError, ValueError):
                raise AnnotationError(
                    f"task {key!r}: resource {name}={value!r} is not a number"
                ) from None
        elif low in _MEM_NAMES:
            try:
                out["MEM"] = float(parse_bytes(value) if isinstance(value, str) else value)
            except (TypeError, ValueError):
                raise AnnotationError(
                    f"task {key!r}: resource {name}={value!r} is not an amount of memory like '64GB'"
                ) from None
        else:
            raise AnnotationError(
                f"task {key!r}: unknown resource {name!r}; Kotta queues are sized by 'vCPU' and 'MEM'"
            )
    return tuple(sorted(out.items()))


def _inputs(key: Any, value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    urls = [u.strip() for u in value.split(",")] if isinstance(value, str) else list(value)
    for url in urls:
        if not isinstance(url, str) or urlparse(url).scheme not in ("s3", "http", "https"):
            raise AnnotationError(f"task {key!r}: input {url!r} is not an s3:// or http(s):// URL")
        try:
            staged_name(url)
        except NoFileNameError as e:
            raise AnnotationError(f"task {key!r}: input {e}") from None
    return tuple(u for u in urls if u)
