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


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--order")
    if order == "file":
        return
    # Modules stay whole (as pytest-randomly keeps them), so module-scoped services start once.
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(modules.values())
    if order == "reverse":
        groups.reverse()
        for g in groups:
            g.reverse()
    elif order.startswith("random"):
        seed = int(order.partition(":")[2] or random.randrange(10**6))
        print(f"--order=random:{seed}")
        rng = random.Random(seed)
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
    else:
        raise pytest.UsageError(f"--order must be file, reverse or random[:SEED], not {order!r}")
    items[:] = [item for g in groups for item in g]
