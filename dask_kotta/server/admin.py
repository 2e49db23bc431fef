"""What an admin does through the server: issue, list and revoke users' tokens.

Each function takes the :class:`~.service.Service` and the user asking, and
raises ``ForbiddenError`` (403) unless that user is an admin (``users.admin``:
``up``'s first user, or one made with ``dask-kotta token NAME --admin``).
A token's secret is returned once, by :func:`create_token`, and is never
logged nor stored: the store keeps its SHA-256, and a token is named by the
first 12 hex digits of that hash (its ``id``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import ConflictError, ForbiddenError, InvalidRequestError, NotFoundError
from .auth import hash_token, new_token
from .service import Service

log = logging.getLogger("dask_kotta.server")

#: The characters of a token id that name it (of the 64 of its hash).
TOKEN_ID_LEN = 12


def require_admin(user: dict[str, Any]) -> None:
    """``ForbiddenError`` unless ``user`` is an admin."""
    if not user.get("admin"):
        raise ForbiddenError(
            f"user {user['name']!r} is not an admin: issuing, listing and revoking tokens "
            "needs an admin token (the credentials `dask-kotta up` wrote for its first user, "
            "or a user made with `dask-kotta token NAME --admin`)"
        )


def create_token(
    s: Service, admin: dict[str, Any], name: str, label: str | None = None,
    expires_in_s: float | None = None, make_admin: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """A new token for user ``name`` (made if new; made an admin too if ``make_admin``).

    Returns the token's ``id``, ``user``, ``label``, ``created_at``, ``expires_at`` (epoch
    seconds, None: never), the ``token`` itself and ``credentials``: the JSON a client
    connects with (``{"url", "token"}``, as in the file ``up`` writes).
    """
    require_admin(admin)
    now = time.time()
    expires_at = None if expires_in_s is None else now + expires_in_s
    uid = s.store.get_or_create_user(name)
    if make_admin:
        s.store.set_admin(name, True)
    token = new_token()
    token_hash = hash_token(token)
    s.store.add_token(uid, token_hash, label=label, expires_at=expires_at)
    token_id = token_hash[:TOKEN_ID_LEN]
    # The id, never the token: the log is read by more people than the token's owner.
    log.info("admin %r made token %s for user %r%s%s", admin["name"], token_id, name,
             " (admin)" if make_admin else "",
             "" if expires_at is None else f", expiring in {expires_in_s:g} s")  # fmt: skip
    return {
        "id": token_id, "user": name, "label": label, "created_at": now,
        "expires_at": expires_at, "token": token,
        "credentials": {"url": s.config.public_url, "token": token},
    }  # fmt: skip


def list_tokens(s: Service, admin: dict[str, Any], user: str | None = None) -> list[dict[str, Any]]:
    """Every token (of ``user``), oldest first: ``id``, ``user``, ``created_at``, ``label``,
    ``expires_at`` and ``expired``; never the token nor its whole hash."""
    require_admin(admin)
    now = time.time()
    return [
        {**t, "expired": t["expires_at"] is not None and t["expires_at"] <= now}
        for t in s.store.list_tokens(user)
    ]


def revoke_token(s: Service, admin: dict[str, Any], token_id: str) -> dict[str, Any]:
    """Delete the one token whose id starts with ``token_id`` (8 or more hex digits).

    This server refuses it at once; other servers of the same store within their token
    cache's time (``TOKEN_CACHE_S``). ``NotFoundError`` if no token has that id,
    ``ConflictError`` if several do (give more digits).
    """
    require_admin(admin)
    try:
        users = s.store.revoke_token(token_id)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    if not users:
        raise NotFoundError(f"no token has an id starting {token_id!r}")
    if len(users) > 1:
        raise ConflictError(
            f"several tokens have an id starting {token_id!r}: give more of its digits"
        )
    s.forget_tokens(token_id.strip().lower())
    log.info("admin %r revoked token %s of user %r", admin["name"], token_id, users[0])
    return {"id": token_id, "user": users[0]}
