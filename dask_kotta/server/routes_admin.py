"""The admin API: issue, list and revoke users' tokens (``/api/v1/admin/``).

Only an admin's token may call it; any other user gets 403. Each route reads
the request and calls ``admin``; refusals are domain errors that ``app``
answers with.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from . import admin
from .deps import User, svc
from .models import TokenBody
from .openapi import for_user

router = APIRouter(prefix="/api/v1/admin")


@router.post(
    "/tokens",
    status_code=201,
    summary="Make a token for a user (made if new)",
    responses=for_user(400),
)
def create_token(request: Request, user: User, body: TokenBody) -> dict:
    """Returns the token once, with ``credentials``: the JSON a client connects with."""
    return admin.create_token(
        svc(request), user, body.name, body.label, body.expires_in_s, body.admin
    )


@router.get(
    "/tokens", summary="List tokens, with their ids (never the tokens)", responses=for_user()
)
def list_tokens(
    request: Request,
    user: User,
    name: Annotated[str | None, Query(alias="user", max_length=128)] = None,
) -> dict:
    """Every user's tokens, or those of ``user``, oldest first."""
    return {"tokens": admin.list_tokens(svc(request), user, name)}


@router.delete(
    "/tokens/{token_id}", summary="Revoke a token by its id", responses=for_user(400, 404, 409)
)
def revoke_token(request: Request, user: User, token_id: str) -> dict:
    """``token_id``: 8 or more hex digits of an id from the list; one token must match."""
    return admin.revoke_token(svc(request), user, token_id)
