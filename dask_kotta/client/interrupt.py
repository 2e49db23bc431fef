"""Ctrl-C in a call that waits for jobs cancels them, as ``srun`` does, and says so in one line.

A blocking ``@kottajob`` call, ``job.wait``, ``job.get_results``,
``konn.gather`` and ``konn.as_completed`` wait inside :func:`cancel_on_interrupt`.
On Ctrl-C it cancels the jobs still pending or running, prints one line to
stderr naming them, and raises ``KeyboardInterrupt`` again (with the ids
cancelled in its ``kotta_cancelled``), so a script still stops as Ctrl-C stops
it (exit by SIGINT), and code that catches ``KeyboardInterrupt`` still can.
Left uncaught, the interpreter's hook prints nothing more for it: the line said
what happened, and a traceback of the client's own frames says nothing a user
can act on (``sys.excepthook`` is wrapped once, for this interrupt only; Jupyter
and IPython show theirs as usual).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, KottaError, NotFoundError

if TYPE_CHECKING:
    from .connection import Kotta
    from .job import KottaJob

#: Job ids named in the line, at most; the rest are counted.
SHOWN_IDS = 20


#: The attribute set on the ``KeyboardInterrupt`` raised after cancelling: the ids cancelled.
CANCELLED = "kotta_cancelled"


def cancelled_by(e: BaseException) -> list[str] | None:
    """The job ids a Ctrl-C cancelled, if ``e`` is the interrupt raised after cancelling them."""
    return getattr(e, CANCELLED, None)


@contextmanager
def cancel_on_interrupt(konn: Kotta, jobs: Iterable[KottaJob]) -> Iterator[None]:
    """Wait inside this: Ctrl-C cancels the ``jobs`` not yet ended, says so, and re-raises."""
    try:
        yield
    except KeyboardInterrupt as e:
        if cancelled_by(e) is not None:
            raise  # an inner wait already cancelled and said so
        cancelled, failed = _cancel(konn, jobs)
        line = _line(cancelled, failed)
        print(line, file=sys.stderr, flush=True)
        _install_hook()
        # A KeyboardInterrupt itself, not a subclass: the interpreter exits by SIGINT only
        # for that exact class, as a shell and a parent process expect of Ctrl-C.
        interrupt = KeyboardInterrupt(line)
        setattr(interrupt, CANCELLED, cancelled)
        raise interrupt from None


def _cancel(konn: Kotta, jobs: Iterable[KottaJob]) -> tuple[list[str], list[str]]:
    cancelled: list[str] = []
    failed: list[str] = []
    # Several Kotta.map futures share one job: cancel (and name) it once.
    live = list(dict.fromkeys(j.job_id for j in jobs if j.job_id and not j.done()))
    for i, job_id in enumerate(live):
        try:
            # Not retried: a user who pressed Ctrl-C will not wait out a server that is away.
            konn.request("POST", f"/api/v1/jobs/{job_id}/cancel", retry=False)
            cancelled.append(job_id)
        except (ConflictError, NotFoundError):
            pass  # it ended meanwhile: nothing to say about it
        except KottaError:
            failed.append(job_id)
        except KeyboardInterrupt:  # a second Ctrl-C: stop cancelling, and say what is left
            failed.extend(live[i:])
            break
    return cancelled, failed


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    more = len(ids) - SHOWN_IDS
    return f"{shown} and {more} more" if more > 0 else shown


def _line(cancelled: list[str], failed: list[str]) -> str:
    parts = []
    if cancelled:
        n = len(cancelled)
        parts.append(f"cancelled {'job' if n == 1 else f'{n} jobs'} {_ids(cancelled)}")
    if failed:
        parts.append(f"could not cancel {_ids(failed)}: cancel with `dask-kotta cancel ID`")
    return "kotta: interrupted; " + ("; ".join(parts) if parts else "no job was left running")


_hooked = False


def _install_hook() -> None:
    global _hooked
    if _hooked:
        return
    _hooked = True
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if cancelled_by(value) is not None:
            return  # the one line was printed when it happened
        previous(kind, value, tb)

    sys.excepthook = hook
