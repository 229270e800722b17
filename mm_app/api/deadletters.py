"""The dead-letter queue: inputs whose retries ran out, kept in the database (Redis has no DLQ).

``GET /dead-letter-queue?page=&per_page=`` lists the user's own (an admin sees all);
``POST /dead-letter-queue/{id}/retry`` takes the failure back and queues the input again as a new
attempt sequence; when it then succeeds, the call completes and ``get()`` returns the value.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, g
from pydantic import Field
from sqlalchemy import func, select, update

from minimodal import protocol
from minimodal.exception import InvalidError, NotFoundError
from minimodal.protocol import CallStatus, PendingEntry

from ..models import DeadLetterRecord, FunctionRecord, InputRecord, utcnow
from ..ownership import owned
from .auth import MAX_INT, authenticate
from .schema import Doc, Query, Reply, Timestamp
from .services import services

bp = Blueprint("deadletters", __name__)
bp.before_request(authenticate)
doc = Doc("dead letters")

MAX_PER_PAGE = 200
MAX_PAGE = 10**9  # far past any real list, and far inside the database's integers


class Page(Query):
    page: int = Field(1, ge=1, le=MAX_PAGE, description="page number, from 1")
    per_page: int = Field(50, ge=1, le=MAX_PER_PAGE, description=f"entries per page (1-{MAX_PER_PAGE})")
    state: Literal["open", "retried", "all"] = Field("open", description="open (default), retried or all")


class DeadLetter(Reply):
    id: int
    call_id: str
    index: int
    function_id: str
    function: str
    attempts: int
    error: str
    traceback: str
    state: Literal["open", "retried"]
    created_at: Timestamp
    retried_at: Timestamp | None


class DeadLetters(Reply):
    items: list[DeadLetter]
    page: int
    per_page: int
    total: int


class Retried(Reply):
    id: int
    call_id: str
    index: int
    state: str


@bp.get("/dead-letter-queue")
@doc("Inputs whose retries ran out (a user's own; an admin sees all)", query=Page, reply=DeadLetters)
def list_dead_letters(query: Page):  # type: ignore[no-untyped-def]
    page, per_page, state = query.page, query.per_page, query.state
    selected = select(DeadLetterRecord, FunctionRecord.tag).join(
        FunctionRecord, FunctionRecord.id == DeadLetterRecord.function_id
    )
    if not g.user.is_admin:
        selected = selected.where(DeadLetterRecord.user_id == g.user.id)
    if state != "all":
        selected = selected.where(DeadLetterRecord.state == state)
    with services().db.read() as session:
        total = session.scalar(select(func.count()).select_from(selected.subquery()))
        rows = session.execute(
            selected.order_by(DeadLetterRecord.id.desc()).offset((page - 1) * per_page).limit(per_page)
        ).all()
        items = [
            {
                "id": record.id,
                "call_id": record.call_id,
                "index": record.idx,
                "function_id": record.function_id,
                "function": tag,
                "attempts": record.attempts,
                "error": record.error,
                "traceback": record.traceback,
                "state": record.state,
                "created_at": record.created_at.isoformat(),
                "retried_at": record.retried_at.isoformat() if record.retried_at else None,
            }
            for record, tag in rows
        ]
    return {"items": items, "page": page, "per_page": per_page, "total": total}


@bp.post("/dead-letter-queue/<int:dead_letter_id>/retry")
@doc("Queue a dead-lettered input again", reply=Retried, errors=(404,), params={"dead_letter_id": "dead-letter entry"})
def retry_dead_letter(dead_letter_id: int):  # type: ignore[no-untyped-def]
    svc = services()
    with svc.db.write() as session:
        if dead_letter_id > MAX_INT:  # the database's integers end there
            raise NotFoundError(f"no dead letter {dead_letter_id!r}")
        record = owned(session, DeadLetterRecord, dead_letter_id, g.user.id, "dead letter", admin=g.user.is_admin)
        if record.state != "open":
            raise InvalidError(f"dead letter {dead_letter_id} was retried already")
        if not svc.redis.hexists(protocol.inputs_key(record.call_id), str(record.idx)):
            raise InvalidError(f"the input of dead letter {dead_letter_id} has expired; call the function again")
        record.state, record.retried_at = "retried", utcnow()
        session.execute(
            update(InputRecord)
            .where(InputRecord.call_id == record.call_id, InputRecord.idx == record.idx)
            .values(status=CallStatus.QUEUED.value, error=None, finished_at=None)
        )
        call_id, idx, function_id, user_id = record.call_id, record.idx, record.function_id, record.user_id
        output_entry = record.output_entry
    svc.payloads.unpublish_output(call_id, idx, output_entry)
    svc.pending.enqueue(user_id, PendingEntry(call_id, function_id, idx, idx + 1))
    return {"id": dead_letter_id, "call_id": call_id, "index": idx, "state": "retried"}
