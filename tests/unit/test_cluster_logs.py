"""What `up`'s cluster workers log at a stop (``server/cluster.py``'s ``_QuietStop``)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

from distributed.core import Status

from dask_kotta.server.cluster import _QuietStop

HEARTBEAT = "Failed to communicate with scheduler during heartbeat."


def _kept(worker, stopping: threading.Event, msg: str = HEARTBEAT) -> bool:
    record = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, None, None)
    return _QuietStop(worker, stopping).filter(record)


def test_a_heartbeat_failure_while_running_is_logged_and_one_at_a_stop_is_not():
    running, closing = (
        SimpleNamespace(status=Status.running),
        SimpleNamespace(status=Status.closing),
    )
    stopping = threading.Event()
    assert _kept(running, stopping)  # the operator must hear of a scheduler gone away
    assert _kept(SimpleNamespace(status=Status.paused), stopping)
    assert not _kept(closing, stopping)
    assert _kept(closing, stopping, "another error")  # only the heartbeat's race is dropped
    stopping.set()  # Ctrl-C reached the group: `up` is closing the cluster
    assert not _kept(running, stopping)
