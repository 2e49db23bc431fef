"""The ``dask-kotta`` command line: the group (``group.py``) and its commands.

The service's commands are in ``service.py``, the client's in ``client.py`` (``get`` and
``resubmit`` in ``outputs.py``, ``ls`` in ``scripting.py``), the job
database's in ``db.py``, ``gc`` in ``retention.py``,
``token`` in ``tokens.py``; each registers itself on :func:`main` as it is imported.
"""

from __future__ import annotations

from . import client, db, outputs, retention, scripting, service, tokens  # noqa: F401  (they register their commands)
from .group import main

__all__ = ["main"]
