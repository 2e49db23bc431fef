"""``python -m dask_kotta.cli``."""

from . import main

main()
