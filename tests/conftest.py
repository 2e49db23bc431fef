"""Options for the whole suite: the order tests run in.

``tests/unit`` runs pieces in-process in seconds; ``tests/integration`` starts
the real parts (its ``conftest.py`` has their fixtures).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import pytest

# The integration layer's modules import each other by name (pytest puts their directory on
# sys.path when it loads its conftest); this one loads first, and needs one of them.
sys.path.insert(0, str(Path(__file__).with_name("integration")))
import shared  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--order",
        default="file",
        help="run tests in 'file' order (default), 'reverse', or 'random' / 'random:SEED', "
        "to show that no test depends on another having run first",
    )


@pytest.hookimpl(trylast=True)  # after pytest's own, which makes the tmp_path factory
def pytest_configure(config):
    # Run as a background job of a script (`.ci/run &`, a CI runner), pytest starts with
    # SIGINT ignored, as POSIX shells do to background commands, and every process a test
    # starts inherits that: a script's Ctrl-C then did nothing, and test_client_ux's Ctrl-C
    # tests waited out their job. A test process gives its children a terminal's default.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    factory = getattr(config, "_tmp_path_factory", None)  # pytest's; xdist reads it too
    shared.configure(factory.getbasetemp() if factory is not None else None)
    # The seed is drawn once, by the controller: xdist's workers must all collect one order.
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        config.option.order = worker["kotta_order"]
    else:
        _compile_package()
        if config.getoption("--order") == "random":
            config.option.order = f"random:{random.randrange(10**6)}"


def _compile_package() -> None:
    """Write dask_kotta's bytecode once, before the suite starts its ~1,000 processes.

    An editable install leaves no ``.pyc`` files, and where ``PYTHONDONTWRITEBYTECODE`` is
    set (it is on the CI machines) every process, a service's or a CLI call's, compiled
    our 24,000 lines again: ~0.2 s of CPU per server start, ~60 CPU-s per run.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("dask_kotta")
    for where in spec.submodule_search_locations or []:
        compileall.compile_dir(where, quiet=1)


def pytest_unconfigure(config):
    # After every xdist process has ended: the services they shared stop here.
    shared.stop_all()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["kotta_order"] = node.config.getoption("--order")


def pytest_report_header(config):
    order = config.getoption("--order")
    return f"--order={order}" if order.startswith("random") else None


# The modules that take longest, started first, longest first (wall time each, from a run
# on the 2-core machine): whole modules go to the processes in this order, and a long one
# started last would leave the others idle at the end. File order otherwise. It holds only
# with --no-loadscope-reorder (pyproject.toml): by default xdist sorts modules by how many
# tests they hold, and the unit layer's big files went first, these last.
LONG_FIRST = [
    "tests/integration/test_ride_through.py",  # ~120 s
    "tests/integration/test_restart.py",
    "tests/integration/test_s3_service.py",
    "tests/integration/test_kept_ends.py",
    "tests/integration/test_cli.py",
    "tests/integration/test_outputs.py",
    "tests/integration/test_start_stop.py",
    "tests/integration/test_fastpath.py",
    "tests/integration/test_browser.py",
    "tests/integration/test_tls.py",
    "tests/integration/test_containment.py",
    "tests/integration/test_dask_suite.py",  # one pytest of Dask's own tests, ~30 s
    "tests/integration/test_chaos.py",  # one test of ~30 s
    "tests/integration/test_client_api.py",
    "tests/integration/test_s3_outage.py",
    "tests/integration/test_dask_frames_s3.py",
    "tests/integration/test_dask_bag_s3.py",
    "tests/integration/test_fuzz.py",  # one schemathesis run of ~20 s
    "tests/integration/test_postgres_service.py",  # one test of ~20 s
    "tests/integration/test_live_logs.py",
    "tests/integration/test_dask_collections.py",
    "tests/integration/test_client_ux.py",
    "tests/integration/test_envs.py",
    "tests/integration/test_upload_limits.py",
    "tests/integration/test_db_upgrade.py",  # ~12 s
    "tests/integration/test_dask_scheduler.py",
    "tests/integration/test_tokens.py",
    "tests/integration/test_listing.py",
]


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one process more than the cores. The tests wait on services a good part of
    the time (starts, restarts, long polls): on 2 cores, 3 processes ran the suite in 7:29
    against 8:12 with 2, the same CPU time (~730 s) in both. ``--maxprocesses`` still caps it."""
    return len(os.sched_getaffinity(0)) + 1


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--order")
    # Modules stay whole (as pytest-randomly keeps them), so module-scoped services start once.
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    if order == "file":
        rank = {name: i for i, name in enumerate(LONG_FIRST)}
        names = sorted(modules, key=lambda m: rank.get(m, len(rank)))  # stable: file order
        items[:] = [item for m in names for item in modules[m]]
        return
    groups = list(modules.values())
    if order == "reverse":
        groups.reverse()
        for g in groups:
            g.reverse()
    elif order.startswith("random"):
        seed = int(order.partition(":")[2])
        rng = random.Random(seed)
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
    else:
        raise pytest.UsageError(f"--order must be file, reverse or random[:SEED], not {order!r}")
    items[:] = [item for g in groups for item in g]
