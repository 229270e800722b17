"""SQLAlchemy models: the durable record of users, apps, functions, calls and their inputs.

A function call (``fc-…``) has one input for ``.remote``/``.spawn`` and many for ``.map``; each input
has its own status, so every accepted input ends in a terminal :class:`~minimodal.protocol.CallStatus`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from minimodal.protocol import CallStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class UserRecord(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    quota: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "quota": self.quota, "weight": self.weight, "is_admin": self.is_admin}


class AppRecord(Base):
    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="ephemeral")  # ephemeral | deployed | replaced | stopped
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class FunctionRecord(Base):
    __tablename__ = "functions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    tag: Mapped[str] = mapped_column(String(256))
    code: Mapped[bytes] = mapped_column(LargeBinary)  # cloudpickled function: opaque to the control plane
    code_hash: Mapped[str] = mapped_column(String(64))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    image_id: Mapped[str | None] = mapped_column(ForeignKey("images.id"), nullable=True)
    image_tag: Mapped[str | None] = mapped_column(String(128), nullable=True)  # None: runs in a runner process
    queue: Mapped[str] = mapped_column(String(32), default="mm.cpu")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentRecord(Base):
    """One version of a deployed app: deploying a name again adds a version and makes it the current one."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("user_id", "name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FunctionSpecRecord(Base):
    """What a function is beyond its code and options: generator, class methods, web endpoint, schedule."""

    __tablename__ = "function_specs"

    function_id: Mapped[str] = mapped_column(ForeignKey("functions.id"), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SourceFileRecord(Base):
    """One file of a user's shipped source (content-addressed): pinned when an app refers to it, so a
    deployed app imports in its containers for as long as it lives (uploads in Redis expire)."""

    __tablename__ = "source_files"

    sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SecretRecord(Base):
    """A user's secret: its values as one Fernet token (see mm_app/vault.py), never stored in clear.

    ``name`` is None for the unnamed secrets of one deploy (``Secret.from_dict`` and friends).
    """

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    keys: Mapped[list[str]] = mapped_column(JSON, default=list)  # the variable names: not secret
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageRecord(Base):
    """A content-addressed image spec and where its build stands (shared by users: same spec, same bytes)."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    tag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)  # per layer: identity, op, cached|built
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    built_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CallRecord(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    function_id: Mapped[str] = mapped_column(ForeignKey("functions.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    num_inputs: Mapped[int] = mapped_column(Integer, default=0)
    accepting: Mapped[bool] = mapped_column(Boolean, default=False)  # a .map still sending inputs
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The call whose code made this one (a function calling a function): the edges of the call graph.
    parent_call_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


class InputRecord(Base):
    __tablename__ = "inputs"

    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=CallStatus.QUEUED.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)  # seconds the user code ran
    startup: Mapped[float | None] = mapped_column(Float, nullable=True)  # seconds it waited for a runner to start


class AttemptRecord(Base):
    """One run of one input: its number (across retry sequences), when, where, and how it ended."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(String(32), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # completed | failed (the attempt, not the input)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeadLetterRecord(Base):
    """An input whose retries are exhausted. Redis has no dead-letter queue: it lives here."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(String(32), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    function_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_entry: Mapped[str | None] = mapped_column(String(32), nullable=True)  # its failure in mm:out:{fc}
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | retried
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retried_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
