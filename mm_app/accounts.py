"""Users and their API tokens: what the API's routes and ``minimodal up`` (the first admin) both create.

A token is shown once, at creation; the database keeps only its SHA-256 (``hash_token``).
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from minimodal.exception import InvalidError
from minimodal.protocol import new_token

from .models import UserRecord

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def hash_token(token: str) -> str:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, name: str, *, quota: int, weight: int, is_admin: bool = False) -> str:
    """Insert a user and return its token (shown once)."""
    if not _NAME.match(name):
        raise InvalidError(f"user name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    if session.scalar(select(UserRecord).where(UserRecord.name == name)) is not None:
        raise InvalidError(f"user {name!r} already exists")
    token = new_token()
    session.add(UserRecord(name=name, token_hash=hash_token(token), quota=quota, weight=weight, is_admin=is_admin))
    return token
