"""What frames.py notices of dask.annotate around dataframes, and what the scheduler does with it."""

from __future__ import annotations

import warnings

import dask
import pytest

import dask_kotta.dask.scheduler  # noqa: F401 - installs frames.py's wrappers
from dask_kotta.dask import frames
from dask_kotta.dask.annotations import (
    AnnotationError,
    DataFrameAnnotationError,
    JobSettings,
    config_overrides,
    refuse_lost,
)

dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")


def _lost_of(*collections, **kw):
    """What the scheduler would be told about a compute of ``collections``."""
    seen = []

    def get(dsk, keys, **kwargs):
        seen.append(frames.take_lost())
        return dask.get(dsk.__dask_graph__(), keys)

    dask.compute(*collections, scheduler=get, **kw)
    return seen[0]


def test_annotations_dropped_by_dataframes_are_noticed():
    df = dd.from_pandas(pd.DataFrame({"a": range(8)}), npartitions=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Dask annotations", UserWarning)
        with dask.annotate(queue="Prod", priority=5):
            plus = df.a + 1
    assert _lost_of(plus.sum()) == {"queue": "Prod"}  # priority is not Kotta's
    assert _lost_of(df.a.sum()) is None  # made outside any annotation
    # The same expression made again without annotations forgets them.
    assert _lost_of((df.a + 1).sum()) is None
    with dask.annotate(walltime=3):
        assert _lost_of(df.a.max()) == {"walltime": 3}
        assert _lost_of(dask.delayed(sum)([1, 2])) is None  # delayed keeps its own


def test_refusal_names_the_setting_to_use_and_accepts_what_runs_anyway():
    default = JobSettings(queue="Test", walltime_min=5)
    refuse_lost({"queue": "Test", "walltime": 5.0}, default)  # nothing ignored
    with pytest.raises(DataFrameAnnotationError) as info:
        refuse_lost({"queue": "Prod", "resources": {"vCPU": 4}}, default)
    text = str(info.value)
    assert "dask.config.set({'kotta.queue': 'Prod'})" in text
    assert "KottaScheduler(konn, queue='Prod')" in text
    assert "resources cannot be set per compute" in text
    assert info.value.lost == {"queue": "Prod", "resources": {"vCPU": 4}}
    with dask.config.set({"kotta.queue": "Prod", "kotta.keep-days": 2}):
        assert config_overrides() == {"queue": "Prod", "keep_days": 2}
    with dask.config.set({"kotta.queu": "Prod"}), pytest.raises(AnnotationError, match="queu"):
        config_overrides()
