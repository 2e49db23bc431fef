"""Options for the whole suite: the order tests run in.

``tests/unit`` runs pieces in-process in seconds; ``tests/integration`` starts
the real parts (its ``conftest.py`` has their fixtures).
"""

from __future__ import annotations

import random

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--order",
        default="file",
        help="run tests in 'file' order (default), 'reverse', or 'random' / 'random:SEED', "
        "to show that no test depends on another having run first",
    )


def pytest_configure(config):
    # The seed is drawn once, by the controller: xdist's workers must all collect one order.
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        config.option.order = worker["kotta_order"]
    elif config.getoption("--order") == "random":
        config.option.order = f"random:{random.randrange(10**6)}"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["kotta_order"] = node.config.getoption("--order")


def pytest_report_header(config):
    order = config.getoption("--order")
    return f"--order={order}" if order.startswith("random") else None


# The modules that take longest (a minute or so each on 2 cores), started first: xdist hands
# whole modules to its processes in this order, and one started last would leave the other
# process idle at the end. File order otherwise.
LONG_FIRST = [
    "tests/integration/test_restart.py",
    "tests/integration/test_s3_service.py",
    "tests/integration/test_upload_limits.py",
    "tests/integration/test_tls.py",
    "tests/integration/test_ride_through.py",
    "tests/integration/test_dask_bag_s3.py",
    "tests/integration/test_s3_outage.py",
    "tests/integration/test_client_api.py",
    "tests/integration/test_chaos.py",
    "tests/integration/test_containment.py",
]


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
