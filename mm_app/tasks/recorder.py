"""The worker's database writer: input status changes, batched, off the calls' threads.

A task reports ``running`` when it takes inputs and ``finished`` with how each attempt ended (one
attempts row each, a dead-letter row for inputs out of retries); outputs are already in Redis by
then, so nothing waits for the database. One thread applies the reports in
order, several per transaction. A ``running`` report is held back ``running_delay`` seconds: when the
inputs finish first (most calls), only the terminal write happens, carrying the start time and the
attempt. At-least-once: a worker killed with reports still queued leaves those inputs for the crash
recovery to settle, as it would a worker killed mid-call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, or_, select, update

from minimodal.protocol import CallStatus

from ..database import Database
from ..models import AttemptRecord, DeadLetterRecord, InputRecord, utcnow

logger = logging.getLogger("minimodal.worker.recorder")

_UNSTARTED = [CallStatus.QUEUED.value, CallStatus.DISPATCHED.value]
_inputs = cast(Table, InputRecord.__table__)  # a mapped class's table (typed as any FromClause)


@dataclass
class _Running:
    call_id: str
    function_id: str
    user_id: int
    indexes: list[int]
    started_at: datetime
    due: float
    finished: bool = False


@dataclass(frozen=True)
class Ended:
    """How one attempt at one input ended, and where that leaves the input."""

    idx: int
    status: str  # the input's status now: completed | failed | dead_letter, or queued when it will be retried
    attempt: int  # this attempt's number, counted over the input's life
    attempt_ok: bool
    error: str | None = None
    duration: float | None = None
    traceback: str | None = None
    output_entry: str | None = None  # the published output's stream id (dead letters: to take it back)
    startup: float | None = None  # seconds it waited for its runner to start (a cold start), else None


@dataclass
class _Finished:
    start: _Running
    ended: list[Ended] = field(default_factory=list)


class Recorder:
    def __init__(self, db: Database, worker_id: str, *, running_delay: float = 0.05) -> None:
        self.db = db
        self.worker_id = worker_id
        self.running_delay = running_delay
        self._queue: queue.Queue[_Running | _Finished | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="mm-recorder", daemon=True)
        self._thread.start()

    def running(self, call_id: str, function_id: str, user_id: int, indexes: list[int]) -> _Running:
        report = _Running(call_id, function_id, user_id, indexes, utcnow(), time.monotonic() + self.running_delay)
        self._queue.put(report)
        return report

    def finished(self, start: _Running, ended: list[Ended]) -> None:
        start.finished = True
        self._queue.put(_Finished(start, ended))

    def close(self, timeout: float = 30) -> None:
        """Apply everything reported so far, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    # ---- the writer thread ----

    def _loop(self) -> None:
        held: list[_Running] = []
        stopping = False
        while not stopping:
            wait = max(0.0, min((r.due for r in held), default=time.monotonic() + 1) - time.monotonic())
            batch: list[_Running | _Finished] = []
            try:
                item = self._queue.get(timeout=wait if held else 1.0)
                while True:
                    if item is None:
                        stopping = True
                    else:
                        batch.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            held += [r for r in batch if isinstance(r, _Running)]
            now = time.monotonic()
            due = [r for r in held if not r.finished and (r.due <= now or stopping)]
            held = [r for r in held if not r.finished and r not in due]
            finished = [f for f in batch if isinstance(f, _Finished)]
            if due or finished:
                try:
                    self._write(due, finished)
                except Exception:  # noqa: BLE001 - keep recording; the outputs are already published
                    logger.exception("writing %d status changes failed", len(due) + len(finished))

    def _write(self, running: list[_Running], finished: list[_Finished]) -> None:
        now = utcnow()
        with self.db.write() as session:
            for report in running:
                session.execute(
                    update(InputRecord)
                    .where(
                        InputRecord.call_id == report.call_id,
                        InputRecord.idx.in_(report.indexes),
                        InputRecord.status.in_(_UNSTARTED),
                    )
                    .values(
                        status=CallStatus.RUNNING.value,
                        started_at=report.started_at,
                        worker=self.worker_id,
                        attempts=InputRecord.attempts + 1,
                    )
                )
            for ended in finished:
                self._write_finished(session, ended, now)

    def _write_finished(self, session: Any, report: _Finished, now: datetime) -> None:
        start, ended = report.start, report.ended
        if not ended:
            return
        rows = [
            {
                "i": e.idx,
                "s": e.status,
                "e": e.error,
                "d": e.duration,
                "u": e.startup,
                "f": None if e.status == CallStatus.QUEUED.value else now,
            }
            for e in ended
        ]
        # Inputs whose running mark was never written get their start and attempt here.
        session.execute(
            _inputs.update()
            .where(
                _inputs.c.call_id == start.call_id,
                _inputs.c.idx == bindparam("i"),
                or_(*(_inputs.c.status == s for s in _UNSTARTED)),
            )
            .values(started_at=start.started_at, worker=self.worker_id, attempts=_inputs.c.attempts + 1),
            rows,
        )
        session.execute(
            _inputs.update()
            .where(
                _inputs.c.call_id == start.call_id,
                _inputs.c.idx == bindparam("i"),
                _inputs.c.status != CallStatus.CANCELLED.value,  # a cancelled input stays cancelled
            )
            .values(
                status=bindparam("s"),
                error=bindparam("e"),
                duration=bindparam("d"),
                startup=bindparam("u"),
                finished_at=bindparam("f"),
            ),
            rows,
        )
        # An attempt's number is the input's attempt counter, so numbering goes on across retry sequences.
        attempts_so_far = (
            select(_inputs.c.attempts)
            .where(_inputs.c.call_id == start.call_id, _inputs.c.idx == bindparam("i"))
            .scalar_subquery()
        )
        session.execute(
            insert(AttemptRecord).values(attempt=attempts_so_far),
            [
                {
                    "i": e.idx,
                    "call_id": start.call_id,
                    "idx": e.idx,
                    "worker": self.worker_id,
                    "status": CallStatus.COMPLETED.value if e.attempt_ok else CallStatus.FAILED.value,
                    "error": e.error,
                    "started_at": start.started_at,
                    "finished_at": now,
                }
                for e in ended
            ],
        )
        dead = [e for e in ended if e.status == CallStatus.DEAD_LETTER.value]
        if dead:
            session.execute(
                insert(DeadLetterRecord),
                [
                    {
                        "call_id": start.call_id,
                        "idx": e.idx,
                        "function_id": start.function_id,
                        "user_id": start.user_id,
                        "attempts": session.execute(
                            select(_inputs.c.attempts).where(_inputs.c.call_id == start.call_id, _inputs.c.idx == e.idx)
                        ).scalar(),
                        "error": e.error,
                        "traceback": e.traceback,
                        "output_entry": e.output_entry,
                        "state": "open",
                        "created_at": now,
                    }
                    for e in dead
                ],
            )
