"""Submitting a call from inside the control plane (a scheduled run, a web request), as the API does.

The same records and queue entries as ``POST /v1/functions/{id}/calls``: a call, its inputs queued in
the database, their payloads and the pending entry in Redis. A call id chosen by the caller makes a
repeated submission a no-op (two beats firing the same slot start one call).
"""

from __future__ import annotations

from sqlalchemy import insert, select, update

from minimodal.protocol import CallStatus, PendingEntry

from .database import Database
from .models import CallRecord, InputRecord, utcnow
from .pending import PendingQueues


def submit_call(
    db: Database, pending: PendingQueues, *, user_id: int, function_id: str, call_id: str, payload: bytes, ttl: int
) -> bool:
    """Start a one-input call; False when ``call_id`` was already taken (nothing is done then)."""
    with db.write_core() as session:
        if session.execute(select(CallRecord.id).where(CallRecord.id == call_id)).first() is not None:
            return False
        now = utcnow()
        session.execute(
            insert(CallRecord).values(
                id=call_id, function_id=function_id, user_id=user_id, num_inputs=1, accepting=False, created_at=now
            )
        )
        session.execute(
            insert(InputRecord).values(
                call_id=call_id, idx=0, status=CallStatus.QUEUED.value, attempts=0, created_at=now
            )
        )
    try:
        pending.enqueue(user_id, PendingEntry(call_id, function_id, 0, 1), inputs={"0": payload}, ttl=ttl)
    except Exception as exc:
        with db.write() as session:  # end it visibly rather than leave it queued forever
            session.execute(
                update(InputRecord)
                .where(InputRecord.call_id == call_id)
                .values(status=CallStatus.FAILED.value, error=f"could not be queued: {exc}", finished_at=utcnow())
            )
        raise
    return True
