"""``from kotta.kotta_functions import *`` gives ``kottajob`` and ``KOut``, as documented."""

from dask_kotta import KOut, kottajob

__all__ = ["kottajob", "KOut"]
