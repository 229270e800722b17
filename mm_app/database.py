"""Engine and sessions. SQLite by default (WAL, one writer at a time); any SQLAlchemy URL by setting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from .models import Base


def _make_engine(url: str) -> Engine:
    if url.startswith("postgresql"):
        # Timestamps come back in UTC whatever the server's TimeZone, as SQLite gives back what was written.
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # pysqlite's own transaction handling is off so that writers can say BEGIN IMMEDIATE: a deferred
    # transaction that upgrades to a write fails at once under concurrency instead of waiting.
    engine = create_engine(url, connect_args={"isolation_level": None, "timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):  # type: ignore[no-untyped-def]
        read_only = connection.get_execution_options().get("mm_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


class Database:
    """The metadata store. ``write()`` and ``read()`` give a session inside one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = self.engine.execution_options(mm_read_only=True)
        self._reader = sessionmaker(self._read_engine, expire_on_commit=False)

    def create_all(self) -> None:
        Base.metadata.create_all(self.engine)

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        with self._writer.begin() as session:
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader.begin() as session:
            yield session

    @contextlib.contextmanager
    def write_core(self) -> Iterator[Connection]:
        """A Core connection in one write transaction: for hot paths, without the ORM's overhead."""
        with self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def read_core(self) -> Iterator[Connection]:
        with self._read_engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()
