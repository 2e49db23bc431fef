"""What a remote task raises that is not a plain exception: warnings, and BaseExceptions.

Warnings raised by a Dask task on Kotta come back to the caller, filtered by the
caller's own ``warnings`` filters; a remote ``BaseException`` is raised as its own
class where that cannot act on the client's process, and as a plain ``RemoteError``
saying why where it could (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``).
All on the session's service.
"""

from __future__ import annotations

import math
import re
import sys
import warnings

import cloudpickle
import pytest
from dask import delayed

from dask_kotta import KottaScheduler
from dask_kotta.errors import RemoteError

# The workers cannot import this module: its functions and classes travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CarefulWarning(UserWarning):
    """A warning class of the user's own, which the client must get back as itself."""


class Abort(BaseException):
    """A BaseException of the user's own (as trio's Cancelled or pytest's Failed are)."""


def warns(x, text="careful"):
    import warnings

    warnings.warn(f"{text} with {x}", CarefulWarning, stacklevel=1)
    return x


def nan_max(n):
    import numpy as np

    return float(np.nanmax(np.full(n, np.nan)))  # RuntimeWarning: All-NaN slice encountered


def add(a, b):
    return a + b


def fails_after_warning(x):
    import warnings

    warnings.warn("about to fail", RuntimeWarning, stacklevel=1)
    raise ZeroDivisionError(f"failed on {x}")


def raises(what):
    import sys

    if what == "exit":
        sys.exit(3)
    raise {"abort": Abort("stop here"), "interrupt": KeyboardInterrupt("remote ^C"),
           "genexit": GeneratorExit("closed")}[what]  # fmt: skip


@pytest.fixture(scope="module")
def sched(konn):
    # One job per task: warnings must also come from jobs whose results the client never reads.
    return KottaScheduler(konn, queue="Test", walltime=2, fuse=False)


def test_task_warnings_come_home_through_the_callers_filters(sched):
    a = delayed(warns)(1, dask_key_name="warns-a")
    b = delayed(warns)(2, dask_key_name="warns-b")  # the same line, another task
    c = delayed(nan_max)(3, dask_key_name="nan-c")
    total = delayed(add)(delayed(add)(a, b), c, dask_key_name="total")  # a, b, c: intermediates

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert math.isnan(total.compute(scheduler=sched))
    mine = [w for w in seen if issubclass(w.category, CarefulWarning)]
    # Each once, as its own class, with its task's key, at its line.
    assert sorted(str(w.message) for w in mine) == [
        "careful with 1 [dask task 'warns-a']", "careful with 2 [dask task 'warns-b']"
    ], [str(w.message) for w in seen]  # fmt: skip
    assert all(
        w.filename == __file__ and w.lineno == warns.__code__.co_firstlineno + 3 for w in mine
    )
    (nan,) = [w for w in seen if w.category is RuntimeWarning]
    assert str(nan.message) == "All-NaN slice encountered [dask task 'nan-c']"
    # numpy names its caller, as it would here
    assert (nan.filename, nan.lineno) == (__file__, nan_max.__code__.co_firstlineno + 3)

    # The caller's filters decide: by category, by message start, by module, as for local code.
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="careful with 1", category=CarefulWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=re.escape(__name__))
        total.compute(scheduler=sched)
    assert [str(w.message) for w in seen] == ["careful with 2 [dask task 'warns-b']"]
    one = delayed(warns)(5, dask_key_name="warns-5")  # one job each from here
    with pytest.warns(CarefulWarning, match=r"^careful with 5 \[dask task 'warns-5'\]$"):
        assert one.compute(scheduler=sched) == 5
    with warnings.catch_warnings():  # as `-W error`: the warning is raised
        warnings.simplefilter("error")
        with pytest.raises(CarefulWarning, match="careful with 5"):
            one.compute(scheduler=sched)


def test_a_failing_tasks_warnings_come_before_its_exception(sched):
    a = delayed(warns)(7, dask_key_name="warns-before")
    bad = delayed(fails_after_warning)(a, dask_key_name="bad")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ZeroDivisionError, match="failed on 7") as err:
            bad.compute(scheduler=sched)
        shown = [str(w.message) for w in seen]  # (already there when the error was raised)
    assert isinstance(err.value, RemoteError)
    assert sorted(shown) == [
        "about to fail [dask task 'bad']",
        "careful with 7 [dask task 'warns-before']",
    ]


def test_a_remote_base_exception_is_its_own_class_unless_it_would_act_on_the_client(konn, sched):
    from kotta.kotta_functions import kottajob

    run = kottajob(konn, "Test", 1)(raises)
    # A BaseException of the user's: its own class and RemoteError, from a job and a task.
    with pytest.raises(Abort, match="stop here") as err:
        run("abort")
    assert isinstance(err.value, RemoteError) and err.value.remote_type == "Abort"
    with pytest.raises(Abort) as err:
        delayed(raises)("abort", dask_key_name="aborts").compute(scheduler=sched)
    assert err.value.key == "aborts" and isinstance(err.value, RemoteError)

    # sys.exit in a job fails that job, clearly, and ends nothing here: a plain RemoteError.
    for what, name in (("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt"),
                       ("genexit", "GeneratorExit")):  # fmt: skip
        try:
            run(what)
        except Exception as e:  # never a SystemExit, KeyboardInterrupt or GeneratorExit
            assert type(e) is RemoteError and e.remote_type == name, repr(e)
            assert f"raised here as RemoteError, not as {name}" in "".join(e.__notes__)
            assert str(e).startswith(name)
        else:
            pytest.fail(f"{what}: no error")
    try:
        delayed(raises)("exit", dask_key_name="exits").compute(scheduler=sched)
    except Exception as e:
        assert type(e) is RemoteError and e.key == "exits" and "SystemExit: 3" in str(e)
        assert e.remote_exception.code == 3

    # In Kotta.map, any of them but KeyboardInterrupt ends its own call only.
    futures = konn.map(raises, ["abort", "genexit", "exit"], queue="Test", walltime=1, chunksize=3)
    errors = [f.exception() for f in futures]
    assert isinstance(errors[0], Abort)
    assert [e.remote_type for e in errors] == ["Abort", "GeneratorExit", "SystemExit"]
