"""Cut a task graph into jobs ("fragments"): pure functions, no I/O.

A Kotta job costs ~0.1-0.2 s however small its work, so a graph of 1,000
tiny tasks must not become 1,000 jobs. The cut keeps three properties:

1. **Acyclic.** A fragment runs whole once every fragment it reads from has
   finished, so the fragments must form a DAG.
2. **Parallel where the graph is.** The graph's roots (tasks with no task
   dependencies), in ``dask.order``'s order, are split into at most
   ``parallelism`` contiguous runs; ``dask.order`` walks depth-first, so a
   contiguous run of roots is a subtree, a few chains, a few partitions.
3. **Few rounds.** Every other task goes where its dependencies are:

   - all its dependencies in one fragment (a linear chain, a subtree): it
     joins that fragment;
   - dependencies in several fragments ``S`` (where branches meet): it joins
     the "join" fragment of ``S``, one per distinct ``S``.

   Then a join fragment whose every dependent lies in one other join
   fragment is merged into it. A tree reduction over 8 runs of leaves thus
   becomes 8 parallel fragments and 1 for the whole tail: 2 rounds, not
   ``log2(8) + 1``.

Tasks join a fragment only with equal ``JobSettings`` (queue, walltime,
requirements, retries, keep_days): a task annotated for ``Prod`` never rides in a
``Test`` job. A ``fuse=False`` task gets a fragment of its own. Input URLs are
unioned per fragment, except that two inputs staged under the same file name
never share one.

Why this is acyclic: a fragment's incoming edges all end at tasks that chose
a join fragment, and a join fragment's dependencies were made before it, so
numbering fragments in creation order is a topological order; merging a
fragment into its only successor cannot close a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..urls import staged_name
from .annotations import JobSettings

Key = Any

SEED, JOIN, SEALED = "seed", "join", "sealed"


@dataclass
class Fragment:
    """One job: tasks run in order in one process."""

    index: int
    settings: JobSettings
    #: Remote tasks, in a valid execution order.
    keys: list[Key] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    #: Fragments this one reads values from, and which keys from each.
    needs: dict[int, list[Key]] = field(default_factory=dict)
    dependents: set[int] = field(default_factory=set)
    #: Keys other fragments read from this one (they go into its result object).
    shared: list[Key] = field(default_factory=list)
    #: Requested keys computed here (the only values the client downloads).
    returns: list[Key] = field(default_factory=list)


class _Groups:
    """Fragments under construction, with a union-find for tail merging."""

    def __init__(self, max_tasks: int | None):
        self.kind: list[str] = []
        self.settings: list[JobSettings] = []
        self.size: list[int] = []
        self.names: list[set[str]] = []
        self.inputs: list[list[str]] = []
        self.parent: list[int] = []
        self.max_tasks = max_tasks

    def new(self, kind: str, settings: JobSettings) -> int:
        self.kind.append(kind)
        self.settings.append(settings)
        self.size.append(0)
        self.names.append(set())
        self.inputs.append([])
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def fits(self, g: int, settings: JobSettings, urls: tuple[str, ...], extra: int = 1) -> bool:
        if self.kind[g] == SEALED or self.settings[g] != settings or not settings.fuse:
            return False
        if self.max_tasks is not None and self.size[g] + extra > self.max_tasks:
            return False
        names = [staged_name(u) for u in urls if u not in self.inputs[g]]
        return not (set(names) & self.names[g]) and len(set(names)) == len(names)

    def add(self, g: int, urls: tuple[str, ...]) -> None:
        self.size[g] += 1
        for u in urls:
            if u not in self.inputs[g]:
                self.inputs[g].append(u)
                self.names[g].add(staged_name(u))

    def merge_into(self, g: int, h: int) -> None:
        self.parent[g] = h
        self.size[h] += self.size[g]
        for u in self.inputs[g]:
            if u not in self.inputs[h]:
                self.inputs[h].append(u)
                self.names[h].add(staged_name(u))


def plan(
    tasks: list[Key],
    deps: Callable[[Key], Any],
    priority: Callable[[Key], int],
    settings: Callable[[Key], tuple[JobSettings, tuple[str, ...]]],
    requested: set[Key],
    parallelism: int,
    fuse: bool = True,
    max_tasks: int | None = None,
) -> list[Fragment]:
    """Cut ``tasks`` (remote tasks only) into fragments, in a topological order.

    ``deps(key)`` gives a task's dependencies (keys outside ``tasks`` are
    local data and ignored here); ``settings(key)`` its ``(JobSettings, inputs)``.
    With ``fuse=False`` every task is a fragment of its own.
    """
    todo = sorted(tasks, key=priority)
    task_set = set(todo)
    groups = _Groups(max_tasks)
    group: dict[Key, int] = {}
    info = {k: settings(k) for k in todo}
    rdeps = {k: [d for d in deps(k) if d in task_set] for k in todo}

    # Seeds: the roots of each kind of job, cut into at most `parallelism` contiguous runs.
    roots_by_settings: dict[JobSettings, list[Key]] = {}
    for k in todo:
        if not rdeps[k] and fuse and info[k][0].fuse:
            roots_by_settings.setdefault(info[k][0], []).append(k)
    for s, roots in roots_by_settings.items():
        runs = max(1, min(parallelism, len(roots)))
        bounds = [round(i * len(roots) / runs) for i in range(runs + 1)]
        for i in range(runs):
            g = groups.new(SEED, s)
            for k in roots[bounds[i] : bounds[i + 1]]:
                group[k] = g

    joins: dict[tuple, int] = {}
    for k in todo:
        s, urls = info[k]
        g = group.get(k)
        if g is not None and not groups.fits(g, s, urls):
            g = None  # a root whose inputs collide with its run's: a fragment of its own
        if g is None:
            dep_groups = frozenset(group[d] for d in rdeps[k])
            if not fuse or not s.fuse:
                g = groups.new(SEALED, s)
            elif len(dep_groups) == 1 and groups.fits(next(iter(dep_groups)), s, urls):
                g = next(iter(dep_groups))
            else:
                jkey = (dep_groups, s)
                g = joins.get(jkey)
                if g is None or not groups.fits(g, s, urls):
                    g = joins[jkey] = groups.new(JOIN, s)
        group[k] = g
        groups.add(g, urls)

    # Successors of each group, then merge join groups into their only successor, last first.
    succ: list[set[int]] = [set() for _ in groups.kind]
    for k in todo:
        for d in rdeps[k]:
            if group[d] != group[k]:
                succ[group[d]].add(group[k])
    if fuse:
        for g in range(len(groups.kind) - 1, -1, -1):
            if groups.kind[g] != JOIN or groups.find(g) != g:
                continue
            targets = {groups.find(h) for h in succ[g]}
            if len(targets) != 1:
                continue
            (h,) = targets
            if groups.kind[h] != JOIN or not groups.fits(
                h, groups.settings[g], tuple(groups.inputs[g]), groups.size[g]
            ):
                continue
            groups.merge_into(g, h)

    # Number the final fragments in topological order (a merged group takes its target's place).
    reps = sorted({groups.find(g) for g in set(group.values())})
    index = {r: i for i, r in enumerate(reps)}
    frags = [
        Fragment(index=i, settings=groups.settings[r], inputs=list(groups.inputs[r]))
        for i, r in enumerate(reps)
    ]
    where: dict[Key, int] = {}
    for k in todo:
        f = index[groups.find(group[k])]
        where[k] = f
        frags[f].keys.append(k)
        if k in requested:
            frags[f].returns.append(k)
    shared: list[set[Key]] = [set() for _ in frags]
    for k in todo:
        f = where[k]
        for d in rdeps[k]:
            e = where[d]
            if e != f:
                frags[f].needs.setdefault(e, [])
                if d not in frags[f].needs[e]:
                    frags[f].needs[e].append(d)
                frags[e].dependents.add(f)
                shared[e].add(d)
    for f in frags:
        f.shared = [k for k in f.keys if k in shared[f.index]]
    return frags
