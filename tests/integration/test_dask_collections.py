"""Dask collections on Kotta give the same results as ``scheduler='sync'``.

Delayed, bag, a small ``dask.array`` reduction and a small ``dask.dataframe``
groupby, each computed on the session's real service.
"""

from __future__ import annotations

import sys

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed

from dask_kotta import KottaScheduler

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def add(x, y):
    return x + y


@pytest.fixture(scope="module")
def sched(konn):
    return KottaScheduler(konn)


def _delayed_graph():
    a = [delayed(inc)(i) for i in range(6)]
    b = [delayed(add)(x, y) for x, y in zip(a[:-1], a[1:], strict=True)]
    c = delayed(sum)(b)
    d = delayed(max)(a)
    return {"sum": c, "max": d, "pair": (b[0], a[-1]), "literal": 7}


def _array_graph():
    x = da.arange(400, chunks=37).reshape(20, 20).rechunk((5, 7))
    return {"sum": x.sum(), "mean0": x.mean(axis=0), "std": (x * 1.5 + 2).std(), "t": x.T[:3, :4]}


def _dataframe_graph():
    pdf = pd.DataFrame(
        {"k": [i % 5 for i in range(100)], "v": np.arange(100.0), "w": np.arange(100) % 7}
    )
    df = dd.from_pandas(pdf, npartitions=4)
    return {
        "groupby": df.groupby("k").v.sum(),
        "agg": df.groupby("k").agg({"v": "mean", "w": "max"}),
        "filtered": df[df.w > 3].v.sum(),
    }


def _bag_graph():
    b = db.from_sequence(range(100), npartitions=7)
    words = db.from_sequence(["a b c", "b c", "c d e", "a"] * 5, npartitions=3)
    return {
        "map_filter": b.map(inc).filter(lambda x: x % 3 == 0).sum(),
        "frequencies": sorted(words.str.split().flatten().frequencies().compute(scheduler="sync")),
        "freq_kotta": words.str.split().flatten().frequencies(),
        "fold": b.fold(add, initial=0),
        "pluck": b.map(lambda x: (x, x * x)).pluck(1).max(),
        "distinct": b.map(lambda x: x % 10).distinct(),
    }


def _normalise(value):
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return value.sort_index()
    if isinstance(value, list):
        try:
            return sorted(value)
        except TypeError:
            return value
    return value


def _assert_same(kotta, sync):
    assert kotta.keys() == sync.keys()
    for name in sync:
        k, s = _normalise(kotta[name]), _normalise(sync[name])
        if isinstance(s, pd.DataFrame):
            pd.testing.assert_frame_equal(k, s)
        elif isinstance(s, pd.Series):
            pd.testing.assert_series_equal(k, s)
        elif isinstance(s, np.ndarray):
            np.testing.assert_allclose(k, s)
        else:
            assert k == s, name


@pytest.mark.parametrize("make", [_delayed_graph, _array_graph, _dataframe_graph, _bag_graph])
def test_same_as_sync(make, sched):
    graph = make()
    (sync,) = dask.compute(graph, scheduler="sync")
    (kotta,) = dask.compute(graph, scheduler=sched)
    _assert_same(kotta, sync)
    assert sched.last_run.jobs >= 1


def test_bag_to_dataframe(sched):
    b = db.from_sequence([{"name": n, "x": i} for i, n in enumerate("abcabcab")], npartitions=3)
    df = b.to_dataframe()
    got = df.groupby("name").x.sum().compute(scheduler=sched)
    want = df.groupby("name").x.sum().compute(scheduler="sync")
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index())
