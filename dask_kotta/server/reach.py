"""Is the dask scheduler there? Asked once, briefly, before a server or worker starts.

Without it, ``server`` printed its banner and failed 30 s later with "Application startup
failed" under a long traceback, and ``worker`` (``dask worker``) with "Nanny failed to
start" after 105 lines. One connection, bounded by :data:`CONNECT_TIMEOUT_S`, tells the
operator at once which address did not answer and what to check.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import ConfigError

#: How long a starting server or worker tries to reach its scheduler, in seconds.
CONNECT_TIMEOUT_S = 5.0


async def _connect(address: str, security: Any, role: str, timeout: float) -> None:
    from distributed.comm import connect
    from distributed.security import Security

    sec = security if security is not None else Security()  # dask's config: TLS files there
    comm = await connect(address, timeout=timeout, **sec.get_connection_args(role))
    await comm.close()


def check_scheduler(
    address: str, security: Any = None, role: str = "client", timeout: float = CONNECT_TIMEOUT_S
) -> None:
    """Connect to the scheduler at ``address`` once and close; a ``ConfigError`` in one line
    names the address and what to check when that fails within ``timeout`` seconds."""
    try:
        asyncio.run(_connect(address, security, role, timeout))
    except Exception as e:
        why = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, (OSError, ValueError, TypeError)):  # something else answered
            why = f"it answered, but not as a dask scheduler does: {type(e).__name__}"
        if why.startswith("Timed out trying to connect"):
            # It repeats the address and the timeout; the last refusal is its cause's end.
            cause = " ".join(str(e.__cause__ or "").split())
            why = cause.rsplit(": ", 1)[-1] if cause else "no answer"
        tls = " and the TLS certificates" if address.startswith("tls://") else ""
        raise ConfigError(
            f"cannot reach the dask scheduler at {address} within {timeout:g} s ({why}); "
            f"check that it runs, its address and port{tls}, and that this host can reach it"
        ) from None
