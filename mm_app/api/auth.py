"""Bearer-token authentication. Tokens are stored as SHA-256 digests only."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from flask import g, request
from sqlalchemy import select

from minimodal.exception import AuthError, InvalidError, PermissionDeniedError
from mm_app import keyspace

from ..accounts import hash_token
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


SCOPED_PREFIX = "mms-"  # tokens workers mint for their containers' calls
MAX_INT = 2**63 - 1  # what the database stores: a larger number is refused, not an overflow error


def users_changed() -> None:
    """Say a user changed (after its transaction committed): every API process reads users afresh."""
    services().redis.incr(keyspace.users_version_key())


def authenticate() -> None:
    """``before_request`` of every authenticated blueprint: sets ``g.user``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing bearer token: send `Authorization: Bearer <token>` (see `minimodal up`)")
    digest = hash_token(token.strip())
    g.scoped = False
    svc = services()
    version = svc.redis.get(keyspace.users_version_key())
    cached = svc.tokens.get(digest, version)
    if cached is not None:
        g.user = cached
        return
    columns = [getattr(UserRecord, c) for c in User._fields]
    with svc.db.read_core() as connection:
        user = connection.execute(select(*columns).where(UserRecord.token_hash == digest)).first()
        if user is None and token.startswith(SCOPED_PREFIX):
            # A token a worker minted for the calls its containers make (mm_app/tasks/forward.py): that
            # user's, while the worker lives; revoking the user's token refuses it too.
            scoped = services().redis.get(keyspace.scoped_token_key(digest))
            if scoped is not None:
                user_id = int(scoped.decode().partition("|")[0])
                user = connection.execute(select(*columns).where(UserRecord.id == user_id)).first()
                g.scoped = user is not None
    if user is None or user.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    g.user = User(*user)
    if not g.scoped:
        svc.tokens.put(digest, version, g.user)


def token_revoked(user_id: int) -> bool:
    """Whether the user's token was revoked since the request authenticated (long-lived sockets ask)."""
    with services().db.read_core() as connection:
        revoked_at = connection.execute(select(UserRecord.revoked_at).where(UserRecord.id == user_id)).scalar()
    return revoked_at is not None


def require_admin() -> None:
    if not g.user.is_admin:
        raise PermissionDeniedError("this needs an admin token")


def seconds(raw: Any, name: str, *, high: float, clamp: bool = False) -> float:
    """A number of seconds from a query or body value: 0 to ``high`` (``clamp``: brought into range)."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidError(f"{name} must be a number of seconds") from exc
    if value != value:  # NaN
        raise InvalidError(f"{name} must be a number of seconds")
    if clamp:
        return min(max(value, 0.0), high)
    if not 0 <= value <= high:
        raise InvalidError(f"{name} must be between 0 and {high:g} seconds")
    return value
