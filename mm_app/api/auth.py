"""Bearer-token authentication. Tokens are stored as SHA-256 digests only."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, NamedTuple

from flask import g, request
from sqlalchemy import select

from minimodal.exception import AuthError, InvalidError, PermissionDeniedError

from ..models import UserRecord
from .services import services


class User(NamedTuple):
    """The authenticated user of a request (``g.user``): plain values, no session attached."""

    id: int
    name: str
    quota: int
    weight: int
    is_admin: bool
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "quota": self.quota, "weight": self.weight, "is_admin": self.is_admin}


MAX_INT = 2**63 - 1  # what the database stores: a larger number is refused, not an overflow error


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate() -> None:
    """``before_request`` of every authenticated blueprint: sets ``g.user``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing bearer token: send `Authorization: Bearer <token>` (see `minimodal up`)")
    with services().db.read_core() as connection:
        user = connection.execute(
            select(*(getattr(UserRecord, c) for c in User._fields)).where(
                UserRecord.token_hash == hash_token(token.strip())
            )
        ).first()
    if user is None or user.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    g.user = User(*user)


def token_revoked(user_id: int) -> bool:
    """Whether the user's token was revoked since the request authenticated (long-lived sockets ask)."""
    with services().db.read_core() as connection:
        revoked_at = connection.execute(select(UserRecord.revoked_at).where(UserRecord.id == user_id)).scalar()
    return revoked_at is not None


def require_admin() -> None:
    if not g.user.is_admin:
        raise PermissionDeniedError("this needs an admin token")


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidError("the request body must be a JSON object")
    return body


def field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True, default: Any = None
) -> Any:
    """One typed field of a JSON body, with a clear error when it is missing or of the wrong type."""
    if name not in body or body[name] is None:
        if required:
            raise InvalidError(f"missing field {name!r}")
        return default
    value = body[name]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise InvalidError(f"field {name!r} must be a number, not a boolean")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidError(f"field {name!r} must be {names}, got {type(value).__name__}")
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise InvalidError(f"field {name!r} is out of range")
    return value
