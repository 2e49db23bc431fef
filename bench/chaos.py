"""A chaos run against a real scale-out service: lost, duplicated and overlapping jobs.

    python bench/chaos.py [--jobs 600] [--workers 3] [--slots 3] [--server-kills 4]
                          [--postgres] [--seed 1]

A dask scheduler with ``--workers`` Kotta workers and a ``dask-kotta server``,
as separate processes; jobs (0.2-2 s each) are submitted in batches while a
random worker process is killed (SIGKILL) every 5-10 s and the server is killed
(SIGKILL) and restarted ``--server-kills`` times. Each job writes its own ledger;
the run prints what it shows (see ``tests/integration/chaos.py``): lost jobs,
jobs completed twice, executions of one job that overlapped, and how long after
a worker's kill the jobs it held were requeued. ``--postgres`` runs the job store
on a PostgreSQL from Debian's packages instead of SQLite. Takes a few minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import chaos  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=600)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--slots", type=int, default=3)
    ap.add_argument("--server-kills", type=int, default=4)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="kotta-chaos-", dir="/var/tmp"))
    pg = None
    database = None
    if args.postgres:
        from pgserver import PostgresServer

        pg = PostgresServer(base / "pg").start()
        database = pg.url
    try:
        report = chaos.run(base, jobs=args.jobs, workers=args.workers, slots=args.slots,
                           server_kills=args.server_kills, database=database, seed=args.seed)  # fmt: skip
    finally:
        if pg is not None:
            pg.stop()
    print(f"# chaos  {'PostgreSQL' if pg else 'SQLite'}  dir={base}")
    print(report.summary())
    for name in ("lost", "duplicates", "overlaps"):
        if getattr(report, name):
            print(f"{name}: {getattr(report, name)}")
    sys.exit(1 if report.lost or report.overlaps else 0)


if __name__ == "__main__":
    main()
