"""``mm.execute``: run a run of inputs of one function call in a warm runner and publish the outputs.

Status moves QUEUED -> RUNNING -> a terminal status in the database, one UPDATE per task at each
end; each output is appended to the call's stream as soon as it exists, so a waiting client wakes
at once. Whatever happens, every input the task took ends terminal and its user's slot is freed.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals
from sqlalchemy import update

from minimodal import protocol
from minimodal.protocol import CallStatus
from workers.runtimes.base import Outcome, RunnerStartError

from ..celery_app import app
from ..models import InputRecord, utcnow
from .context import WorkerContext, close_context, get_context

logger = logging.getLogger("minimodal.worker")

_EWMA = 0.2  # weight of the newest measurement in a function's average run time


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    get_context()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    close_context()


def _envelope(idx: int, outcome: Outcome, ctx: WorkerContext, call_id: str, user_id: int) -> dict[str, Any]:
    status = CallStatus.COMPLETED if outcome.ok else CallStatus.FAILED
    envelope: dict[str, Any] = {protocol.OUT_INDEX: idx, protocol.OUT_STATUS: status.value}
    if outcome.data:
        if len(outcome.data) > ctx.inline_limit:
            envelope[protocol.OUT_BLOB] = ctx.payloads.put_blob_bytes(user_id, outcome.data)
        else:
            envelope[protocol.OUT_DATA] = outcome.data
    envelope[protocol.OUT_ERROR_TYPE] = outcome.error_type
    envelope[protocol.OUT_MESSAGE] = outcome.message
    envelope[protocol.OUT_TRACEBACK] = outcome.traceback
    return envelope


def _mark(ctx: WorkerContext, call_id: str, indexes: list[int], **values: Any) -> None:
    if indexes:
        with ctx.db.write() as session:
            session.execute(
                update(InputRecord).where(InputRecord.call_id == call_id, InputRecord.idx.in_(indexes)).values(**values)
            )


def _finish_inputs(ctx: WorkerContext, call_id: str, results: list[tuple[int, Outcome]]) -> None:
    """One transaction for the terminal status of every input of the task."""
    if not results:
        return
    now = utcnow()
    with ctx.db.write() as session:
        for idx, outcome in results:
            session.execute(
                update(InputRecord)
                .where(InputRecord.call_id == call_id, InputRecord.idx == idx)
                .values(
                    status=(CallStatus.COMPLETED if outcome.ok else CallStatus.FAILED).value,
                    finished_at=now,
                    duration=outcome.duration,
                    error=None if outcome.ok else (outcome.message or "failed")[:2000],
                )
            )


def _record_speed(ctx: WorkerContext, function_id: str, results: list[tuple[int, Outcome]]) -> None:
    durations = [o.duration for _, o in results if o.ok]
    if not durations:
        return
    key = protocol.function_stats_key(function_id)
    newest = sum(durations) / len(durations) * 1e6
    old = ctx.redis.hget(key, "avg_us")
    avg = newest if old is None else (1 - _EWMA) * float(old) + _EWMA * newest
    ctx.redis.hset(key, "avg_us", max(1, int(avg)))
    ctx.redis.expire(key, 7 * 24 * 3600)


@app.task(name=protocol.TASK_EXECUTE, bind=True, acks_late=True, ignore_result=True)
def execute(self: Any, call_id: str, function_id: str, user_id: int, start: int, end: int) -> None:
    ctx = get_context()
    indexes = list(range(start, end))
    results: list[tuple[int, Outcome]] = []  # filled by _run as inputs end
    try:
        _run(ctx, call_id, function_id, user_id, indexes, results)
    except Exception as exc:  # noqa: BLE001 - the platform failed: end the inputs visibly, never lose them
        logger.exception("task for %s[%d:%d] failed", call_id, start, end)
        done = {idx for idx, _ in results}
        failure = Outcome(ok=False, error_type="ServiceError", message=f"the worker failed: {exc!r}")
        failed = [(idx, failure) for idx in indexes if idx not in done]
        for idx, outcome in failed:
            try:
                ctx.payloads.put_output(call_id, _envelope(idx, outcome, ctx, call_id, user_id))
            except Exception:  # noqa: BLE001 - Redis may be the failure; the database still records it
                logger.exception("cannot publish the failure of %s[%d]", call_id, idx)
        _finish_inputs(ctx, call_id, results + failed)  # re-marking finished ones is harmless
    finally:
        ctx.pending.finish(user_id, function_id)


def _run(
    ctx: WorkerContext,
    call_id: str,
    function_id: str,
    user_id: int,
    indexes: list[int],
    results: list[tuple[int, Outcome]],
) -> None:
    spec = ctx.function(function_id)
    if spec is None or spec.user_id != user_id:
        failure = Outcome(ok=False, error_type="NotFoundError", message=f"function {function_id} does not exist")
        _publish_all(ctx, call_id, user_id, indexes, failure, results)
        return
    _mark(
        ctx,
        call_id,
        indexes,
        status=CallStatus.RUNNING.value,
        started_at=utcnow(),
        worker=ctx.worker_id,
        attempts=InputRecord.attempts + 1,
    )
    payloads = ctx.payloads.get_inputs(call_id, range(indexes[0], indexes[-1] + 1))
    runner_spec = ctx.runner_spec(spec)
    pool = ctx.pool_for(spec)
    if pool is None:
        message = f"{spec.tag} needs a container, and this worker has no Docker engine"
        _publish_all(
            ctx, call_id, user_id, indexes, Outcome(ok=False, error_type="ServiceError", message=message), results
        )
        return
    runner = None
    try:
        for idx, payload in zip(indexes, payloads, strict=True):
            if payload is None:
                outcome = Outcome(
                    ok=False,
                    error_type="ServiceError",
                    message=f"the input {idx} of {call_id} is missing from Redis (expired or flushed)",
                )
            else:
                if runner is None:
                    try:
                        runner = pool.acquire(runner_spec)
                    except RunnerStartError as exc:
                        failure = Outcome(ok=False, error_type="RemoteError", message=str(exc), traceback=exc.traceback)
                        rest = indexes[len(results) :]
                        _finish_inputs(ctx, call_id, results)
                        _publish_all(ctx, call_id, user_id, rest, failure, results)
                        return
                outcome = runner.call(payload, call_id=call_id, idx=idx, on_log=_log_sink(call_id, idx))
                if outcome.runner_lost or idx == indexes[-1]:
                    # Back to the pool before the output is published: the caller's next call may come at
                    # once, to another slot of this worker, and should find this runner warm.
                    pool.release(runner)
                    runner = None
            ctx.payloads.put_output(call_id, _envelope(idx, outcome, ctx, call_id, user_id))
            results.append((idx, outcome))
        _finish_inputs(ctx, call_id, results)
        _record_speed(ctx, function_id, results)
    finally:
        if runner is not None:
            pool.release(runner)


def _publish_all(
    ctx: WorkerContext,
    call_id: str,
    user_id: int,
    indexes: list[int],
    outcome: Outcome,
    results: list[tuple[int, Outcome]],
) -> None:
    ended = [(idx, outcome) for idx in indexes]
    for idx, _ in ended:
        ctx.payloads.put_output(call_id, _envelope(idx, outcome, ctx, call_id, user_id))
    _finish_inputs(ctx, call_id, ended)
    results.extend(ended)


def _log_sink(call_id: str, idx: int):  # type: ignore[no-untyped-def]
    def sink(stream: str, text: str) -> None:
        target = sys.stderr if stream == "stderr" else sys.stdout
        target.write(text)
        target.flush()

    return sink
