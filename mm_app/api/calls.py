"""Calls: submit inputs, read outputs (long-poll), and move large payloads as blobs."""

from __future__ import annotations

import binascii
import re
from typing import Any

from flask import Blueprint, Response, g, request
from sqlalchemy import func, insert, select, update

from minimodal import protocol
from minimodal.defaults import DEFAULT_LONG_POLL_SECONDS
from minimodal.exception import InvalidError, NotFoundError, OutputExpiredError, PayloadTooLargeError
from minimodal.protocol import TERMINAL, CallStatus, PendingEntry

from ..cancel import cancel_calls
from ..dispatcher import dispatch_direct
from ..models import AppRecord, AttemptRecord, CallRecord, FunctionRecord, InputRecord, utcnow
from .auth import authenticate, field, json_body, seconds
from .services import services
from .streams import encode_entry

bp = Blueprint("calls", __name__, url_prefix="/v1")
bp.before_request(authenticate)

MAX_INPUTS_PER_REQUEST = 1000
INPUTS_SHOWN = 100  # GET /v1/calls/{id} details this many inputs (statuses count them all)
_CURSOR = re.compile(r"^\d+-\d+$")
_CALL_ID = re.compile(r"^fc-[A-Za-z0-9]{16}$")


def _parse_inputs(body: dict[str, Any]) -> list[bytes]:
    """The request's inputs as opaque payloads: checked for pickle framing, never unpickled."""
    svc = services()
    inputs = field(body, "inputs", list)
    if len(inputs) > MAX_INPUTS_PER_REQUEST:
        raise InvalidError(f"at most {MAX_INPUTS_PER_REQUEST} inputs per request, got {len(inputs)}")
    payloads = []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or len(item) != 1 or not ({"args", "blob"} & set(item)):
            raise InvalidError(f"input {i}: give exactly one of 'args' (base64 pickle) or 'blob' (blob id)")
        if "blob" in item:
            blob_id = item["blob"]
            if not isinstance(blob_id, str) or svc.payloads.blob_owner(blob_id) != g.user.id:
                raise NotFoundError(f"input {i}: no blob {blob_id!r}")
            payloads.append(protocol.blob_ref(blob_id))
            continue
        if not isinstance(item["args"], str):
            raise InvalidError(f"input {i}: 'args' must be a base64 string")
        try:
            data = protocol.unb64(item["args"])
        except (binascii.Error, ValueError) as exc:
            raise InvalidError(f"input {i}: 'args' is not valid base64") from exc
        if len(data) > svc.settings["inline_payload_size"]:
            raise PayloadTooLargeError(
                f"input {i}: {len(data):,} bytes inline, over {svc.settings['inline_payload_size']:,}; upload a blob"
            )
        if not protocol.looks_like_pickle(data):
            raise InvalidError(f"input {i}: 'args' is not a pickle (expected a protocol 2-5 header and STOP byte)")
        payloads.append(data)
    return payloads


def _enqueue(call_id: str, function_id: str, first: int, payloads: list[bytes]) -> None:
    if not payloads:
        return
    svc = services()
    svc.pending.enqueue(
        g.user.id,
        PendingEntry(call_id, function_id, first, first + len(payloads)),
        inputs={str(first + i): p for i, p in enumerate(payloads)},
        ttl=svc.settings["result_ttl"],
        front=bool(getattr(g, "scoped", False) and request.headers.get(PARENT_HEADER)),
    )
    if svc.settings["direct_dispatch"]:
        dispatch_direct(svc.pending, svc.celery, g.user.id)


def _add_inputs(session: Any, call_id: str, first: int, count: int) -> None:
    if count:
        now = utcnow()
        session.execute(
            insert(InputRecord.__table__),
            [
                {
                    "call_id": call_id,
                    "idx": first + i,
                    "status": CallStatus.QUEUED.value,
                    "attempts": 0,
                    "created_at": now,
                }
                for i in range(count)
            ],
        )


def _fail_unqueued(call_id: str, first: int, count: int, why: str) -> None:
    """Redis refused the inputs after the database took them: end them visibly rather than leave them."""
    with services().db.write() as session:
        session.execute(
            update(InputRecord)
            .where(InputRecord.call_id == call_id, InputRecord.idx >= first, InputRecord.idx < first + count)
            .values(status=CallStatus.FAILED.value, error=why, finished_at=utcnow())
        )


def _encode_envelope(fields: dict[str, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == protocol.OUT_DATA:
            out[name] = protocol.b64(value)
        elif name == protocol.OUT_INDEX:
            out[name] = int(value)
        else:
            out[name] = value.decode("utf-8", "replace")
    return out


def _parse_wait(raw: Any, name: str) -> float:
    return seconds(raw, name, high=60)


@bp.post("/functions/<function_id>/calls")
def create_call(function_id: str):  # type: ignore[no-untyped-def]
    """Start a function call with its first inputs; ``more: true`` keeps it open for a .map."""
    services().rate_limiter.check(g.user.id)
    body = json_body("inputs", "more", "wait", "call_id", "logs")
    more = field(body, "more", bool, required=False, default=False)
    wait = _parse_wait(body.get("wait", 0), "wait")
    payloads = _parse_inputs(body)
    if not payloads and not more:
        raise InvalidError("a call needs at least one input")
    svc = services()
    call_id = field(body, "call_id", str, required=False) or protocol.new_id("fc")
    if not _CALL_ID.match(call_id):
        raise InvalidError("call_id must look like 'fc-' and 16 letters or digits (or be left out)")
    with svc.db.write_core() as session:
        # Core statements: this is every call's path, and the ORM would load the function's code too.
        found = session.execute(
            select(FunctionRecord.user_id, AppRecord.state)
            .join(AppRecord, AppRecord.id == FunctionRecord.app_id)
            .where(FunctionRecord.id == function_id)
        ).first()
        if found is None or found.user_id != g.user.id:
            raise NotFoundError(f"no function {function_id!r}")
        if found.state == "stopped":
            raise NotFoundError(f"the app of function {function_id!r} is stopped; run it again")
        owner = session.execute(select(CallRecord.user_id).where(CallRecord.id == call_id)).scalar()
        if owner is not None and owner != g.user.id:
            raise InvalidError(f"the call id {call_id} is taken; leave call_id out to get a fresh one")
        accepted_before = owner is not None  # the client retried a request whose answer it never got
        if not accepted_before:
            session.execute(
                insert(CallRecord).values(
                    id=call_id,
                    function_id=function_id,
                    user_id=g.user.id,
                    num_inputs=len(payloads),
                    accepting=more,
                    created_at=utcnow(),
                    parent_call_id=_parent_call(session),
                )
            )
            _add_inputs(session, call_id, 0, len(payloads))
    # A retry enqueues only if the first try stopped between the database and Redis (no payload stored).
    if not accepted_before or not svc.redis.hexists(protocol.inputs_key(call_id), "0"):
        try:
            _enqueue(call_id, function_id, 0, payloads)
        except Exception:
            _fail_unqueued(call_id, 0, len(payloads), "Redis refused the inputs at submission")
            raise
    reply: dict[str, Any] = {"call_id": call_id, "first": 0, "count": len(payloads)}
    if wait > 0:
        envelopes, cursor = svc.payloads.read_outputs(call_id, "0-0", int(wait * 1000))
        reply["outputs"] = [_encode_envelope(e) for e in envelopes]
        reply["cursor"] = cursor
        if envelopes and field(body, "logs", bool, required=False, default=False):
            # The call is over: what it printed comes back with its result, in the same round trip.
            entries = svc.payloads.read_streams({protocol.logs_key(call_id): "0-0"}, 0, count=5000)
            reply["logs"] = [encode_entry("logs", entry_id, fields) for _, entry_id, fields in entries]
    return reply, 201


PARENT_HEADER = "X-MiniModal-Parent-Call"  # sent by a worker forwarding a function's call (mm_app/tasks/forward.py)


def _parent_call(session: Any) -> str | None:
    """The call whose code makes this one: named by the worker, believed only from a worker-scoped token
    and only when that call is the same user's."""
    parent = request.headers.get(PARENT_HEADER)
    if not parent or not getattr(g, "scoped", False) or not _CALL_ID.match(parent):
        return None
    owner = session.execute(select(CallRecord.user_id).where(CallRecord.id == parent)).scalar()
    return parent if owner == g.user.id else None


def _own_call(session: Any, call_id: str) -> CallRecord:
    call = session.get(CallRecord, call_id)
    if call is None or call.user_id != g.user.id:
        raise NotFoundError(f"no function call {call_id!r}")
    return call


@bp.post("/calls/<call_id>/inputs")
def add_inputs(call_id: str):  # type: ignore[no-untyped-def]
    """Append inputs to an open call (a .map in progress); ``more: false`` closes it."""
    services().rate_limiter.check(g.user.id)
    body = json_body("inputs", "more", "first")
    more = field(body, "more", bool, required=False, default=False)
    payloads = _parse_inputs(body)
    expected = field(body, "first", int, required=False)
    with services().db.write() as session:
        call = _own_call(session, call_id)
        if expected is not None and expected < call.num_inputs:
            # A retried request whose answer was lost: these inputs are in already.
            return {"call_id": call_id, "first": expected, "count": len(payloads)}
        if expected is not None and expected > call.num_inputs:
            raise InvalidError(f"first={expected}, but the call has {call.num_inputs} inputs: send them in order")
        if not call.accepting:
            raise InvalidError(f"function call {call_id} takes no more inputs")
        first = call.num_inputs
        call.num_inputs += len(payloads)
        call.accepting = more
        function_id = call.function_id
        _add_inputs(session, call_id, first, len(payloads))
    try:
        _enqueue(call_id, function_id, first, payloads)
    except Exception:
        _fail_unqueued(call_id, first, len(payloads), "Redis refused the inputs at submission")
        raise
    return {"call_id": call_id, "first": first, "count": len(payloads)}


@bp.get("/calls/<call_id>")
def get_call(call_id: str):  # type: ignore[no-untyped-def]
    with services().db.read() as session:
        call = _own_call(session, call_id)
        counts = dict(
            session.execute(
                select(InputRecord.status, func.count())
                .where(InputRecord.call_id == call_id)
                .group_by(InputRecord.status)
            ).all()
        )
        done = sum(n for status, n in counts.items() if CallStatus(status) in TERMINAL)
        tag = session.scalar(select(FunctionRecord.tag).where(FunctionRecord.id == call.function_id))
        inputs = session.scalars(
            select(InputRecord).where(InputRecord.call_id == call_id).order_by(InputRecord.idx).limit(INPUTS_SHOWN)
        ).all()
        return {
            "call_id": call.id,
            "function_id": call.function_id,
            "function": tag,
            "created_at": call.created_at.isoformat(),
            "num_inputs": call.num_inputs,
            "accepting": call.accepting,
            "parent_call_id": call.parent_call_id,
            "statuses": counts,
            "done": not call.accepting and done == call.num_inputs,
            "inputs": [
                {
                    "index": i.idx,
                    "status": i.status,
                    "attempts": i.attempts,
                    "worker": i.worker,
                    "started_at": i.started_at.isoformat() if i.started_at else None,
                    "finished_at": i.finished_at.isoformat() if i.finished_at else None,
                    "duration": i.duration,
                    "error": i.error,
                }
                for i in inputs
            ],
        }


@bp.post("/calls/<call_id>/cancel")
def cancel_call(call_id: str):  # type: ignore[no-untyped-def]
    """``FunctionCall.cancel()``: what has not ended of the call (and of the calls it made) ends ``cancelled``."""
    svc = services()
    with svc.db.write() as session:
        _own_call(session, call_id)
        count = cancel_calls(
            session, svc.redis, svc.payloads, [call_id], ttl=svc.settings["result_ttl"], why="the call was cancelled"
        )
    return {"call_id": call_id, "cancelled": count}


@bp.get("/calls/<call_id>/attempts")
def get_attempts(call_id: str):  # type: ignore[no-untyped-def]
    """Every attempt at every input of the call: number, status, error, worker, start and end."""
    with services().db.read() as session:
        _own_call(session, call_id)
        rows = session.scalars(
            select(AttemptRecord).where(AttemptRecord.call_id == call_id).order_by(AttemptRecord.idx, AttemptRecord.id)
        ).all()
        return {
            "attempts": [
                {
                    "index": r.idx,
                    "attempt": r.attempt,
                    "status": r.status,
                    "error": r.error,
                    "worker": r.worker,
                    "started_at": r.started_at.isoformat(),
                    "finished_at": r.finished_at.isoformat(),
                }
                for r in rows
            ]
        }


@bp.get("/calls/<call_id>/outputs")
def get_outputs(call_id: str):  # type: ignore[no-untyped-def]
    """Outputs after ``cursor``, waiting up to ``timeout`` seconds for the first (long-poll)."""
    cursor = request.args.get("cursor", "0-0")
    if not _CURSOR.match(cursor):
        raise InvalidError("cursor must look like '<ms>-<seq>' (use the cursor of the previous reply)")
    wait = _parse_wait(request.args.get("timeout", DEFAULT_LONG_POLL_SECONDS), "timeout")
    svc = services()
    with svc.db.read() as session:
        _own_call(session, call_id)
    envelopes, cursor = svc.payloads.read_outputs(call_id, cursor, int(wait * 1000))
    if not envelopes and not svc.payloads.outputs_exist(call_id):
        with svc.db.read() as session:
            left = session.scalar(
                select(func.count()).where(
                    InputRecord.call_id == call_id, InputRecord.status.not_in([s.value for s in TERMINAL])
                )
            )
        if left == 0:
            raise OutputExpiredError(f"the outputs of {call_id} have expired (kept MINIMODAL_RESULT_TTL seconds)")
    return {"outputs": [_encode_envelope(e) for e in envelopes], "cursor": cursor}


@bp.put("/blobs")
def put_blob():  # type: ignore[no-untyped-def]
    """Store a large payload from a streamed request body; answer its id."""
    svc = services()
    limit = svc.settings["max_payload_size"]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"{request.content_length:,} bytes is over the maximum payload size of {limit:,}")
    blob_id, size = svc.payloads.put_blob(g.user.id, request.stream, limit)
    return {"blob_id": blob_id, "size": size}, 201


@bp.get("/blobs/<blob_id>")
def get_blob(blob_id: str):  # type: ignore[no-untyped-def]
    svc = services()
    if svc.payloads.blob_owner(blob_id) != g.user.id:
        raise NotFoundError(f"no blob {blob_id!r}")
    return Response(svc.payloads.iter_blob(blob_id), mimetype="application/octet-stream")
