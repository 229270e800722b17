"""Submitting a call: what ``POST /v1/functions/{id}/calls``, a scheduled run (beat) and a web request share.

A call is its record and one record per input in the database, then the inputs' payloads and one pending
entry in Redis (mm_app/pending.py), in that order. A call id chosen by the caller makes a repeated
submission a no-op: a client retrying a request whose answer it lost, or two beats firing the same slot,
start one call. If Redis refuses the inputs after the database took them, they end ``failed`` at once
rather than stay queued forever.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, insert, select, update

from minimodal import protocol
from minimodal.exception import InvalidError, NotFoundError
from minimodal.protocol import CallStatus
from mm_app import keyspace
from mm_app.keyspace import PendingEntry

from .broker import TaskSender
from .database import Database
from .models import AppRecord, CallRecord, FunctionRecord, InputRecord, utcnow
from .observability import log_sent
from .pending import PendingQueues, Take

UNQUEUED_ERROR = "Redis refused the inputs at submission"  # the error of inputs Redis would not take


class Submitted(NamedTuple):
    """What :func:`submit_call` did."""

    call_id: str
    new: bool  # False: the id was this user's call already (a repeated submission); nothing was recorded
    sent: Take | None = None  # given a ``sender`` and nobody else waits: the task the enqueue step sent


def submit_call(
    db: Database,
    pending: PendingQueues,
    *,
    user_id: int,
    function_id: str,
    payloads: list[bytes],
    ttl: int,
    call_id: str | None = None,
    more: bool = False,
    parent_call_id: str | None = None,
    front: bool = False,
    sender: TaskSender | None = None,
) -> Submitted:
    """Start a call of ``function_id`` by ``user_id`` with its first inputs.

    Args:
        payloads: the inputs' pickled arguments (or blob references), never unpickled here.
        ttl: how long Redis keeps the payloads and outputs, in seconds.
        call_id: a fresh id when left out; an id that is already this user's call is a repeated
            submission, which queues the inputs again only if the first stopped before Redis stored them.
        more: the call stays open for more inputs (a ``.map`` in progress, see :func:`queue_inputs`).
        parent_call_id: the call whose code makes this one, recorded only when it is the same user's.
        front: queue before the user's other work (a running parent waits on this call).
        sender: take and send the first task in the enqueue step when nobody else waits (see :func:`queue_inputs`).

    Raises:
        NotFoundError: the function is not the user's, or its app is stopped.
        InvalidError: ``call_id`` is another user's call.
    """
    call_id = call_id or protocol.new_id("fc")
    with db.write_core() as session:
        # Core statements: this is every call's path, and the ORM would load the function's code too.
        # One statement for the function, its app and whoever has this call id already.
        found = session.execute(
            select(
                FunctionRecord.user_id,
                AppRecord.state,
                select(CallRecord.user_id).where(CallRecord.id == call_id).scalar_subquery().label("owner"),
            )
            .join(AppRecord, AppRecord.id == FunctionRecord.app_id)
            .where(FunctionRecord.id == function_id)
        ).first()
        if found is None or found.user_id != user_id:
            raise NotFoundError(f"no function {function_id!r}")
        if found.state == "stopped":
            raise NotFoundError(f"the app of function {function_id!r} is stopped; run it again")
        owner = found.owner
        if owner is not None and owner != user_id:
            raise InvalidError(f"the call id {call_id} is taken; leave call_id out to get a fresh one")
        new = owner is None
        if new:
            if parent_call_id is not None:
                parent_owner = session.execute(
                    select(CallRecord.user_id).where(CallRecord.id == parent_call_id)
                ).scalar()
                parent_call_id = parent_call_id if parent_owner == user_id else None
            session.execute(
                insert(CallRecord).values(
                    id=call_id,
                    function_id=function_id,
                    user_id=user_id,
                    num_inputs=len(payloads),
                    accepting=more,
                    created_at=utcnow(),
                    parent_call_id=parent_call_id,
                )
            )
            add_input_records(session, call_id, 0, len(payloads))
    # A repeat queues only if the first try stopped between the database and Redis (no payload stored).
    sent = None
    if new or not pending.redis.hexists(keyspace.inputs_key(call_id), "0"):
        sent = queue_inputs(
            db,
            pending,
            user_id=user_id,
            function_id=function_id,
            call_id=call_id,
            first=0,
            payloads=payloads,
            ttl=ttl,
            front=front,
            sender=sender,
        )
    return Submitted(call_id, new, sent)


def add_input_records(session: Any, call_id: str, first: int, count: int) -> None:
    """The database's records of inputs ``first`` to ``first + count - 1``, queued (in the caller's session)."""
    if count:
        now = utcnow()
        session.execute(
            insert(cast(Table, InputRecord.__table__)),  # Core: one executemany, no ORM objects
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


def queue_inputs(
    db: Database,
    pending: PendingQueues,
    *,
    user_id: int,
    function_id: str,
    call_id: str,
    first: int,
    payloads: list[bytes],
    ttl: int,
    front: bool = False,
    sender: TaskSender | None = None,
) -> Take | None:
    """Store recorded inputs' payloads and queue them; if Redis refuses, they end ``failed`` and this raises.

    With a ``sender`` (the API's shortcut), when a dispatcher leads and nobody else waits, the same Lua
    step takes the head of the user's queue and sends its task (mm_app/lua/enqueue.lua); that task is
    returned, and its "sent" line logged as the dispatcher logs its own.
    """
    if not payloads:
        return None
    end = first + len(payloads)
    task_id = str(uuid.uuid4())  # the task's, if the enqueue step takes and sends one
    try:
        sent = pending.enqueue(
            user_id,
            PendingEntry(call_id, function_id, first, end),
            inputs={str(first + i): p for i, p in enumerate(payloads)},
            ttl=ttl,
            front=front,
            direct=sender.template(keyspace.TASK_EXECUTE, task_id) if sender is not None else None,
        )
    except Exception:
        with db.write() as session:  # end them visibly rather than leave them queued forever
            session.execute(
                update(InputRecord)
                .where(
                    InputRecord.call_id == call_id, InputRecord.idx >= first, InputRecord.idx < first + len(payloads)
                )
                .values(status=CallStatus.FAILED.value, error=UNQUEUED_ERROR, finished_at=utcnow())
            )
        raise
    if sent is not None and sent.entry is not None:
        e = sent.entry
        if protocol.is_sandbox(e.call_id):
            log_sent(keyspace.TASK_SANDBOX, [e.call_id, user_id], sent.queue, task_id)
        else:
            log_sent(keyspace.TASK_EXECUTE, [e.call_id, e.function_id, user_id, e.start, e.end], sent.queue, task_id)
    return sent
