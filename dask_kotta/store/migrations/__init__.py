"""The job store's Alembic migration environment, shipped inside the package.

``env.py`` is what Alembic runs; ``versions/`` holds one revision per schema change,
``v0001_initial`` being the schema of dask-kotta 0.1.0, which made its tables with
``create_all`` and kept no revision. :mod:`dask_kotta.store.migrate` finds this
directory by the package's own path, so no ``alembic.ini`` and no working directory
is involved.
"""
