"""dask.annotate on Kotta: per-task queue, walltime, retries and resources.

Needs: a running service (`dask-kotta up` in the repository root writes ../auth.file).
Run:   cd examples && python annotations.py
Prints: the result, then each job's queue, walltime, retries and the tasks it ran,
        as the service recorded them; then the error for resources no queue has.
"""

import random

import dask
from dask import delayed

from dask_kotta import KottaScheduler
from dask_kotta.dask import NoQueueFitsError
from kotta import Kotta

konn = Kotta(open("../auth.file").read())
print("queues:", {name: f"{q['vcpus']} vCPU, {q['memory']}" for name, q in konn.queues().items()})


def simulate(seed):
    rng = random.Random(seed)
    return sum(rng.random() for _ in range(100_000))


def flaky_fetch(i):
    # fails one time in three: `retries` lets the job run again
    if random.random() < 1 / 3:
        raise ConnectionError(f"fetch {i} failed")
    return i


def combine(xs, ys):
    return sum(xs) + sum(ys)


# Heavy tasks on Prod with a longer walltime.
with dask.annotate(queue="Prod", walltime=30):
    sims = [delayed(simulate)(s, dask_key_name=f"simulate-{s}") for s in range(3)]

# Flaky tasks get retries; the queue comes from the scheduler's default.
with dask.annotate(retries=5):
    fetched = [delayed(flaky_fetch)(i, dask_key_name=f"fetch-{i}") for i in range(3)]

# Resources pick the smallest queue that has them.
with dask.annotate(resources={"vCPU": 1, "MEM": "100MB"}):
    total = delayed(combine)(sims, fetched, dask_key_name="combine")

sched = KottaScheduler(konn, queue="Test", walltime=5)
print("result:", total.compute(scheduler=sched))

# What each job ran with, as the service recorded it.
for job_id in sched.last_run.job_ids:
    job = konn.job(job_id)
    ann = job["annotations"]
    print(
        f"job {job_id}: queue={job['queue']} walltime={job['walltime_min']:g} min "
        f"retries={job['retries']} failures={job['failures']} "
        f"resources={ann.get('resources')} tasks={ann['dask']['keys']}"
    )

# No queue has 100,000 vCPUs: the error names the largest queue, and nothing is submitted.
with dask.annotate(resources={"vCPU": 100_000}):
    impossible = delayed(simulate)(0, dask_key_name="impossible")
try:
    impossible.compute(scheduler=sched)
except NoQueueFitsError as e:
    print("refused:", e)
