"""Calls: submit inputs, read outputs (long-poll), and move large payloads as blobs."""

from __future__ import annotations

import binascii
import re
from typing import Any, Literal

from flask import Blueprint, Response, g, request
from pydantic import Field
from sqlalchemy import func, select

from minimodal import protocol
from minimodal.defaults import DEFAULT_LONG_POLL_SECONDS
from minimodal.exception import InvalidError, OutputExpiredError, PayloadTooLargeError
from minimodal.protocol import TERMINAL, CallStatus
from mm_app import keyspace

from ..cancel import cancel_calls
from ..models import AttemptRecord, CallRecord, FunctionRecord, InputRecord
from ..ownership import check_owner, owned
from ..submit import add_input_records, queue_inputs, submit_call
from .auth import authenticate, seconds
from .schema import Body, Doc, Int, Query, Reply, Timestamp
from .services import services
from .streams import encode_entry

bp = Blueprint("calls", __name__, url_prefix="/v1")
bp.before_request(authenticate)

MAX_INPUTS_PER_REQUEST = 1000
INPUTS_SHOWN = 100  # GET /v1/calls/{id} details this many inputs (statuses count them all)
_CURSOR = re.compile(r"^\d+-\d+$")
_CALL_ID = re.compile(r"^fc-[A-Za-z0-9]{16}$")
doc = Doc("calls")


class Inputs(Body):
    inputs: list[dict[str, Any]] = Field(
        description="each {args: base64 pickle of (args, kwargs)} or {blob: id from PUT /v1/blobs}; at most 1000"
    )
    more: bool = Field(False, description="keep the call open for more inputs (a .map)")


class NewCall(Inputs):
    wait: float = Field(0, description="seconds to wait for outputs in the reply (0-60)")
    logs: bool = Field(False, description="with wait: return printed lines too")
    call_id: str | None = Field(None, description="the client's own id (fc-...), so that a retry is not a second call")


class MoreInputs(Inputs):
    first: Int | None = Field(None, description="the index the client expects these inputs to start at")


class Envelope(Reply):
    idx: int = Field(description="input index")
    status: Literal["completed", "failed", "dead_letter", "cancelled"] = Field(description="terminal status")
    data: str = Field(description="base64 pickle of the return value or exception")
    blob: str = Field(description="blob id when the pickle was too large to inline")
    error_type: str = Field(description="minimodal.exception name of a platform-side failure")
    message: str
    traceback: str


class Accepted(Reply):
    call_id: str
    first: int
    count: int


class CallStarted(Accepted):
    outputs: list[Envelope]
    cursor: str


class CallView(Reply):
    call_id: str
    function_id: str
    num_inputs: int
    accepting: bool
    parent_call_id: str | None = Field(description="the call that made this one")
    statuses: dict[str, int]
    done: bool


class Cancelled(Reply):
    call_id: str
    cancelled: int


class Attempt(Reply):
    index: int
    attempt: int
    status: str
    error: str
    worker: str
    started_at: Timestamp
    finished_at: Timestamp


class Attempts(Reply):
    attempts: list[Attempt]


class OutputsAfter(Query):
    cursor: str = Field("0-0", pattern=_CURSOR.pattern, description="the previous reply's cursor; `0-0` from the start")
    timeout: float = Field(DEFAULT_LONG_POLL_SECONDS, description="seconds to wait for the first output (0-60)")


class Outputs(Reply):
    outputs: list[Envelope]
    cursor: str


class BlobStored(Reply):
    blob_id: str
    size: int


def _parse_inputs(inputs: list[dict[str, Any]]) -> list[bytes]:
    """The request's inputs as opaque payloads: checked for pickle framing, never unpickled."""
    svc = services()
    if len(inputs) > MAX_INPUTS_PER_REQUEST:
        raise InvalidError(f"at most {MAX_INPUTS_PER_REQUEST} inputs per request, got {len(inputs)}")
    payloads = []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or len(item) != 1 or not ({"args", "blob"} & set(item)):
            raise InvalidError(f"input {i}: give exactly one of 'args' (base64 pickle) or 'blob' (blob id)")
        if "blob" in item:
            blob_id = item["blob"]
            owner = svc.payloads.blob_owner(blob_id) if isinstance(blob_id, str) else None
            check_owner(owner, g.user.id, f"blob (input {i})", blob_id)
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
@doc("Start a function call with its first inputs", body=NewCall, reply=CallStarted, ok=201, errors=(404, 429))
def create_call(function_id: str, body: NewCall):  # type: ignore[no-untyped-def]
    """Start a function call with its first inputs; ``more: true`` keeps it open for a .map."""
    services().rate_limiter.check(g.user.id)
    more = body.more
    wait = _parse_wait(body.wait, "wait")
    payloads = _parse_inputs(body.inputs)
    if not payloads and not more:
        raise InvalidError("a call needs at least one input")
    svc = services()
    call_id = body.call_id or protocol.new_id("fc")
    if not _CALL_ID.match(call_id):
        raise InvalidError("call_id must look like 'fc-' and 16 letters or digits (or be left out)")
    parent = _parent_call()
    submit_call(
        svc.db,
        svc.pending,
        user_id=g.user.id,
        function_id=function_id,
        payloads=payloads,
        ttl=svc.settings["result_ttl"],
        call_id=call_id,
        more=more,
        parent_call_id=parent,
        front=parent is not None,
        sender=svc.sender if svc.settings["direct_dispatch"] else None,  # nobody else waits: no dispatcher pass
    )
    reply: dict[str, Any] = {"call_id": call_id, "first": 0, "count": len(payloads)}
    if wait > 0:
        envelopes, cursor = svc.payloads.read_outputs(call_id, "0-0", int(wait * 1000))
        reply["outputs"] = [_encode_envelope(e) for e in envelopes]
        reply["cursor"] = cursor
        if envelopes and body.logs:
            # The call is over: what it printed comes back with its result, in the same round trip.
            entries = svc.payloads.read_streams({keyspace.logs_key(call_id): "0-0"}, 0, count=5000)
            reply["logs"] = [encode_entry("logs", entry_id, fields) for _, entry_id, fields in entries]
    return reply, 201


PARENT_HEADER = "X-MiniModal-Parent-Call"  # sent by a worker forwarding a function's call (mm_app/tasks/forward.py)


def _parent_call() -> str | None:
    """The call whose code makes this one: named by the worker, believed only from a worker-scoped token
    (and recorded only when that call is the same user's, by submit_call)."""
    parent = request.headers.get(PARENT_HEADER)
    if not parent or not getattr(g, "scoped", False) or not _CALL_ID.match(parent):
        return None
    return parent


def _own_call(session: Any, call_id: str) -> CallRecord:
    return owned(session, CallRecord, call_id, g.user.id, "function call")


@bp.post("/calls/<call_id>/inputs")
@doc("Add inputs to an open call (.map)", body=MoreInputs, reply=Accepted, errors=(404, 429))
def add_inputs(call_id: str, body: MoreInputs):  # type: ignore[no-untyped-def]
    """Append inputs to an open call (a .map in progress); ``more: false`` closes it."""
    services().rate_limiter.check(g.user.id)
    more = body.more
    payloads = _parse_inputs(body.inputs)
    expected = body.first
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
        add_input_records(session, call_id, first, len(payloads))
    svc = services()
    queue_inputs(
        svc.db,
        svc.pending,
        user_id=g.user.id,
        function_id=function_id,
        call_id=call_id,
        first=first,
        payloads=payloads,
        ttl=svc.settings["result_ttl"],
        front=_parent_call() is not None,
        sender=svc.sender if svc.settings["direct_dispatch"] else None,
    )
    return {"call_id": call_id, "first": first, "count": len(payloads)}


@bp.get("/calls/<call_id>")
@doc("A call's inputs by status", reply=CallView, errors=(404,))
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
@doc(
    "Cancel what has not ended of a call and of the calls it made: each such input ends cancelled",
    reply=Cancelled,
    errors=(404,),
)
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
@doc("Every attempt at every input of a call", reply=Attempts, errors=(404,))
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
@doc("Outputs after a cursor (long-poll)", query=OutputsAfter, reply=Outputs, errors=(404, 410))
def get_outputs(call_id: str, query: OutputsAfter):  # type: ignore[no-untyped-def]
    """Outputs after ``cursor``, waiting up to ``timeout`` seconds for the first (long-poll)."""
    cursor = query.cursor
    wait = _parse_wait(query.timeout, "timeout")
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
@doc("Upload a large payload (streamed body)", raw_body="application/octet-stream", reply=BlobStored, ok=201)
def put_blob():  # type: ignore[no-untyped-def]
    """Store a large payload from a streamed request body; answer its id."""
    svc = services()
    limit = svc.settings["max_payload_size"]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"{request.content_length:,} bytes is over the maximum payload size of {limit:,}")
    blob_id, size = svc.payloads.put_blob(g.user.id, request.stream, limit)
    return {"blob_id": blob_id, "size": size}, 201


@bp.get("/blobs/<blob_id>")
@doc("Download a blob", reply=bytes, media="application/octet-stream", errors=(404,))
def get_blob(blob_id: str):  # type: ignore[no-untyped-def]
    svc = services()
    check_owner(svc.payloads.blob_owner(blob_id), g.user.id, "blob", blob_id)
    return Response(svc.payloads.iter_blob(blob_id), mimetype="application/octet-stream")
