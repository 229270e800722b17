"""Live streams of a call: generator items, outputs and printed logs, by long-poll or WebSocket.

Each kind is a Redis stream (see sdk/protocol.py), so a client names a cursor per kind and gets every
entry after it, in order, exactly once; reconnecting with the last cursors loses nothing. Items stay
``MINIMODAL_STREAM_TTL`` seconds (1 h) after the call; outputs and logs ``MINIMODAL_RESULT_TTL``.

``GET /v1/calls/{id}/stream?items=&outputs=&logs=&timeout=`` answers what is there (or waits up to
``timeout`` for something); ``/v1/calls/{id}/ws`` (WebSocket, same bearer token) pushes the same
events as JSON text messages until the client closes. ``GET /v1/calls/{id}/logs`` and
``GET /v1/apps/{id or name}/logs`` read stored logs (``follow`` waits for more).
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any

from flask import Blueprint, g, request
from flask_sock import Sock
from pydantic import Field
from sqlalchemy import select

from minimodal import protocol
from minimodal.exception import NotFoundError

from ..models import AppRecord, CallRecord
from ..ownership import check_owner
from .auth import authenticate, seconds, token_revoked
from .schema import Doc, Query, Reply
from .services import services

bp = Blueprint("streams", __name__, url_prefix="/v1")
bp.before_request(authenticate)
sock = Sock()


@bp.before_request
def _check_before_upgrade() -> None:
    """A WebSocket is refused with the REST status (401/404) before it is upgraded, not closed after."""
    if request.endpoint == "streams.stream_ws" and request.view_args:
        _own_call(request.view_args["call_id"])


_CURSOR = re.compile(r"^\d+-\d+$")
KINDS = ("items", "outputs", "logs")
_KEYS = {"items": protocol.items_key, "outputs": protocol.outputs_key, "logs": protocol.logs_key}
REVOKE_CHECK_SECONDS = 1  # an open WebSocket re-reads its user's token state this often (at most)
PING_SECONDS = 5  # a WebSocket with nothing to say sends a ping this often, which also detects a gone client


doc = Doc("calls")
Cursor = Annotated[str, Field(pattern=_CURSOR.pattern)]


class Cursors(Query):
    items: Cursor | None = Field(None, description="cursor of the items stream")
    outputs: Cursor | None = Field(None, description="cursor of the outputs stream")
    logs: Cursor | None = Field(None, description="cursor of the logs stream")

    def given(self) -> dict[str, str]:
        """The cursors given, or every stream from its start."""
        found = {kind: getattr(self, kind) for kind in KINDS if getattr(self, kind) is not None}
        return found or {kind: "0-0" for kind in KINDS}


class CursorsWait(Cursors):
    timeout: float = Field(0, description="seconds to wait (0-60)")


class LogCursor(Query):
    cursor: Cursor = Field("0-0", description="stream cursor of the previous reply, `<ms>-<seq>`; `0-0` from the start")
    follow: str = Field("0", description="1: wait for more lines")


class Events(Reply):
    events: list[dict[str, Any]]


class Logs(Reply):
    logs: list[dict[str, Any]]
    cursor: str


class AppLogs(Logs):
    app_id: str


def _own_call(call_id: str) -> None:
    with services().db.read_core() as connection:
        owner = connection.execute(select(CallRecord.user_id).where(CallRecord.id == call_id)).scalar()
    check_owner(owner, g.user.id, "function call", call_id)


def encode_entry(kind: str, entry_id: str, fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One stream entry as JSON: pickled data in base64, numbers as numbers, the rest as text."""
    event: dict[str, Any] = {"kind": kind[:-1] if kind != "outputs" else "output", "cursor": entry_id}
    for raw_name, value in fields.items():
        name = raw_name.decode()
        if name == protocol.OUT_DATA:
            event[name] = protocol.b64(value)
        elif name in (
            protocol.OUT_INDEX,
            protocol.ITEM_N,
            protocol.ITEM_COUNT,
            protocol.ITEM_DONE,
            protocol.OUT_ITEMS,
            protocol.LOG_SEQ,
        ):
            event[name] = int(value)
        else:
            event[name] = value.decode("utf-8", "replace")
    return event


def _read(call_id: str, cursors: dict[str, str], block_ms: int) -> list[dict[str, Any]]:
    by_key = {_KEYS[kind](call_id): kind for kind in cursors}
    entries = services().payloads.read_streams(
        {_KEYS[kind](call_id): cursor for kind, cursor in cursors.items()}, block_ms
    )
    events = [encode_entry(by_key[key], entry_id, fields) for key, entry_id, fields in entries]
    # Within one read, items before outputs: an input's output comes after its last item.
    order = {"item": 0, "log": 1, "output": 2}
    return sorted(events, key=lambda e: order[e["kind"]])


@bp.get("/calls/<call_id>/stream")
@doc(
    "Generator items, outputs and logs after per-kind cursors (long-poll)",
    query=CursorsWait,
    reply=Events,
    errors=(404,),
)
def stream(call_id: str, query: CursorsWait):  # type: ignore[no-untyped-def]
    _own_call(call_id)
    wait = seconds(query.timeout, "timeout", high=60, clamp=True)
    return {"events": _read(call_id, query.given(), int(wait * 1000))}


@sock.route("/calls/<call_id>/ws", bp=bp)
@doc(
    "WebSocket of the same events as /stream",
    query=Cursors,
    ok=101,
    errors=(404,),
    description="Upgrade to a WebSocket; the server sends JSON text messages (`batch` or `ping`).",
)
def stream_ws(ws: Any, call_id: str, query: Cursors) -> None:
    """Push items, outputs and logs after the given cursors until the client closes."""
    cursors = query.given()
    checked = pinged = time.monotonic()
    while True:
        if time.monotonic() - checked >= REVOKE_CHECK_SECONDS:
            if token_revoked(g.user.id):  # a token revoked while its socket is open stops it too
                ws.close(reason=1008, message="token revoked")
                return
            checked = time.monotonic()
        events = _read(call_id, cursors, REVOKE_CHECK_SECONDS * 1000)
        if not events:
            if time.monotonic() - pinged >= PING_SECONDS:
                ws.send(json.dumps({"kind": "ping"}))
                pinged = time.monotonic()
            continue
        for event in events:
            kind = "outputs" if event["kind"] == "output" else event["kind"] + "s"
            cursors[kind] = event["cursor"]
        pinged = time.monotonic()
        ws.send(json.dumps({"kind": "batch", "events": events}))


@bp.get("/calls/<call_id>/logs")
@doc("What a call printed", query=LogCursor, reply=Logs, errors=(404,), tag="logs")
def call_logs(call_id: str, query: LogCursor):  # type: ignore[no-untyped-def]
    _own_call(call_id)
    return _logs(protocol.logs_key(call_id), query)


@bp.get("/apps/<app>/logs")
@doc(
    "What an app's calls printed",
    query=LogCursor,
    reply=AppLogs,
    errors=(404,),
    tag="logs",
    params={"app": "app id or name (the newest app of that name)"},
)
def app_logs(app: str, query: LogCursor):  # type: ignore[no-untyped-def]
    """Logs of an app, by id or by name (the newest app of that name)."""
    with services().db.read_core() as connection:
        app_id = connection.execute(
            select(AppRecord.id)
            .where(AppRecord.user_id == g.user.id, (AppRecord.id == app) | (AppRecord.name == app))
            .order_by(AppRecord.created_at.desc())
            .limit(1)
        ).scalar()
    if app_id is None:
        raise NotFoundError(f"no app {app!r}")
    return {"app_id": app_id, **_logs(protocol.app_logs_key(app_id), query)}


def _logs(key: str, query: LogCursor) -> dict[str, Any]:
    cursor = query.cursor
    follow = query.follow in ("1", "true")
    entries = services().payloads.read_streams({key: cursor}, 15000 if follow else 0, count=5000)
    events = [encode_entry("logs", entry_id, fields) for _, entry_id, fields in entries]
    return {"logs": events, "cursor": events[-1]["cursor"] if events else cursor}
