"""Users and their API tokens: what the API's routes and ``minimodal up`` (the first admin) both create.

A token is shown once, at creation; the database keeps only its SHA-256 (``hash_token``).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from minimodal.exception import InvalidError
from minimodal.protocol import new_token

from .models import UserRecord

U = TypeVar("U")
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


class TokenCache(Generic[U]):
    """The users this API process authenticated lately, by token digest: one Redis GET instead of a
    database read on every request.

    An entry holds while the users' version in Redis (:func:`mm_app.api.auth.users_changed`, bumped by every change to
    a user through the API: a new user, a quota, a revoked token) is the one it was read at, and for at
    most ``ttl`` seconds, which bounds what a change made to the database by other means takes to show.
    Scoped tokens (minted by workers for their containers) are not cached: they end with their worker.
    """

    def __init__(self, ttl: float = 5.0, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[U, bytes | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str, version: bytes | None) -> U | None:
        with self._lock:
            found = self._entries.get(digest)
        if found is None or found[1] != version or found[2] < time.monotonic():
            return None
        return found[0]

    def put(self, digest: str, version: bytes | None, user: U) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()  # a flood of distinct tokens: start again rather than track an LRU
            self._entries[digest] = (user, version, time.monotonic() + self.ttl)
