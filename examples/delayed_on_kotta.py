"""Dask delayed on Kotta: a small analysis graph, every task run as part of a Kotta job.

Needs: a running service (`dask-kotta up` in the repository root writes ../auth.file).
Run:   cd examples && python delayed_on_kotta.py
Prints: a progress bar, the summary {'n': 8, 'mean': ..., 'best': ...}, and how many
        jobs and requests the 41 tasks took.
"""

import dask
from dask import delayed
from dask.diagnostics import ProgressBar

from dask_kotta import KottaScheduler
from kotta import Kotta

konn = Kotta(open("../auth.file").read())


def load(i):
    # stands in for reading one shard of data
    return [(i * 37 + j * 11) % 100 for j in range(1000)]


def clean(xs):
    return [x for x in xs if x % 7]


def mean(xs):
    return sum(xs) / len(xs)


def spread(xs):
    return max(xs) - min(xs)


def score(m, s):
    return m / (1 + s)


def summarize(scores, means):
    return {"n": len(scores), "mean": sum(means) / len(means), "best": max(scores)}


# 8 shards; each cleaned shard feeds two statistics that meet again (a diamond),
# and every mean is shared by its score and by the summary.
shards = [delayed(clean)(delayed(load)(i)) for i in range(8)]
means = [delayed(mean)(s) for s in shards]
scores = [delayed(score)(m, delayed(spread)(s)) for m, s in zip(means, shards, strict=True)]
summary = delayed(summarize)(scores, means)

sched = KottaScheduler(konn, queue="Test", walltime=5)
with ProgressBar():
    (result,) = dask.compute(summary, scheduler=sched)
print(result)

# The same graph on the local synchronous scheduler gives the same answer.
assert result == summary.compute(scheduler="sync")

run = sched.last_run
print(
    f"{run.tasks} tasks ran in {run.jobs} Kotta jobs, with {run.submit_requests} submit "
    f"and {run.wait_requests} wait requests; the client downloaded {run.downloaded_bytes} bytes."
)
