"""Cancelling calls: ``FunctionCall.cancel()``, and the end of an ephemeral app (its entrypoint returned).

Every input of the call (and, transitively, of the calls it made) that has not ended is marked
``cancelled`` in the database and gets a ``cancelled`` output at once, so nothing waits for ever and
nothing is lost from view. The call is flagged in Redis (``cancelled_key``): a worker that receives one of
its tasks later runs nothing of it, and the output a still-running input publishes afterwards is dropped
(each index is published once), while the recorder never turns a cancelled input into another state.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update

from minimodal import protocol
from minimodal.protocol import TERMINAL, CallStatus
from mm_app import keyspace

from .models import CallRecord, InputRecord, utcnow

MAX_DEPTH = 16  # levels of nested calls followed
_OPEN = [s.value for s in CallStatus if s not in TERMINAL]


def with_descendants(session: Any, call_ids: list[str]) -> list[str]:
    """The calls and every call they made (``parent_call_id``), breadth first."""
    found, frontier = list(dict.fromkeys(call_ids)), list(call_ids)
    for _ in range(MAX_DEPTH):
        if not frontier:
            break
        children = list(session.scalars(select(CallRecord.id).where(CallRecord.parent_call_id.in_(frontier))))
        frontier = [c for c in children if c not in found]
        found += frontier
    return found


def cancel_calls(session: Any, redis: Any, payloads: Any, call_ids: list[str], *, ttl: int, why: str) -> int:
    """Cancel what has not ended of these calls and their descendants; return how many inputs that was.

    Each open input gets its ``cancelled`` output first, and the database follows the output that won:
    an input whose own output was published already (it ended, and the worker's recorder has yet to say
    so) keeps it, and its status is left for the recorder to write, so it never reads ``cancelled``.
    """
    calls = with_descendants(session, call_ids)
    if not calls:
        return 0
    open_inputs = session.execute(
        select(InputRecord.call_id, InputRecord.idx).where(
            InputRecord.call_id.in_(calls), InputRecord.status.in_(_OPEN)
        )
    ).all()
    with redis.pipeline(transaction=False) as pipe:
        for call_id in calls:
            pipe.set(keyspace.cancelled_key(call_id), "1", ex=ttl)
        pipe.execute()
    by_call: dict[str, list[int]] = {}
    for call_id, idx in open_inputs:
        by_call.setdefault(call_id, []).append(idx)
    cancelled = 0
    for call_id, indexes in by_call.items():
        indexes.sort()
        ids = payloads.put_outputs(
            call_id,
            [
                {
                    protocol.OUT_INDEX: idx,
                    protocol.OUT_STATUS: CallStatus.CANCELLED.value,
                    protocol.OUT_ERROR_TYPE: "InputCancelledError",
                    protocol.OUT_MESSAGE: why,
                    protocol.OUT_ENDED_AT: f"{time.time():.6f}",
                }
                for idx in indexes
            ],
        )
        # The call's outputs first, then its rows: those whose own output won are left to the recorder.
        kept = [idx for idx, entry in zip(indexes, ids, strict=True) if entry is None]
        session.execute(
            update(InputRecord)
            .where(
                InputRecord.call_id == call_id,
                InputRecord.status.in_(_OPEN),
                *([InputRecord.idx.notin_(kept)] if kept else []),
            )
            .values(status=CallStatus.CANCELLED.value, error=why, finished_at=utcnow())
        )
        cancelled += len(indexes) - len(kept)
    return cancelled
