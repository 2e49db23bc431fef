"""A remote exception as data: what a job sends back so the client can show the user's code.

Shared by the two places a python job's exception is caught: ``runner/child.py``
(a job's function) and ``calls.py`` (each call of a ``Kotta.map`` job). Each
sends, beside the exception, its traceback starting at the user's code (the
catching module's own frame dropped) as ``frames`` (``[file, line, function,
source]``, the source ``""`` where the worker cannot read the file: the client
fills it in from its own copy, see ``client/serialize.loads_result``), ``chain``
(the text of the exceptions it was raised from or during) and ``exc_only`` (the
lines that name it, with its notes).
"""

from __future__ import annotations

import traceback
from typing import Any


def describe(e: BaseException, skip_file: str) -> dict[str, Any]:
    """``e`` as a failed outcome: ``ok``, ``type``, ``message``, ``traceback`` (the text),
    ``frames``, ``chain`` and ``exc_only``; leading frames of ``skip_file`` are dropped."""
    te = traceback.TracebackException.from_exception(e)
    stack = list(te.stack)
    while stack and stack[0].filename == skip_file:  # our call of the user's code
        stack.pop(0)
    te.stack = traceback.StackSummary.from_list(stack)
    full = "".join(te.format())
    chain = full[: len(full) - len("".join(te.format(chain=False)))]
    return {
        "ok": False,
        "type": type(e).__name__,
        "message": str(e),
        "traceback": full,
        "frames": [[f.filename, f.lineno, f.name, f.line or ""] for f in stack],
        "chain": chain,
        "exc_only": "".join(te.format_exception_only()),
    }
