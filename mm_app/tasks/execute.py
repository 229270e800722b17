"""``mm.execute``: run a run of inputs of one function call in a warm runner and publish the outputs.

Each output is appended to the call's Redis stream the moment it exists, so a waiting client wakes at
once; status changes go to the database through the worker's :class:`~.recorder.Recorder`, off the
call's path. Whatever happens, every input the task took gets an output and a terminal status, and
its user's and function's slots are freed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from minimodal import protocol
from minimodal.protocol import CallStatus
from workers.runtimes.base import Outcome, RunnerStartError

from ..celery_app import app
from .context import WorkerContext, close_context, get_context

logger = logging.getLogger("minimodal.worker")


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    get_context()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    close_context()


def _envelope(ctx: WorkerContext, user_id: int, idx: int, outcome: Outcome) -> dict[str, Any]:
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
    envelope[protocol.OUT_ITEMS] = outcome.items
    envelope[protocol.OUT_ENDED_AT] = f"{time.time():.6f}"
    return envelope


def _terminal(idx: int, outcome: Outcome) -> tuple[int, str, str | None, float | None]:
    status = CallStatus.COMPLETED if outcome.ok else CallStatus.FAILED
    error = None if outcome.ok else (outcome.message or "failed")[:2000]
    return idx, status.value, error, outcome.duration or None


@app.task(name=protocol.TASK_EXECUTE, bind=True, acks_late=True, ignore_result=True)
def execute(self: Any, call_id: str, function_id: str, user_id: int, start: int, end: int) -> None:
    ctx = get_context()
    indexes = list(range(start, end))
    report = ctx.recorder.running(call_id, indexes)
    results: dict[int, Outcome] = {}  # filled by _run as inputs end
    try:
        _run(ctx, call_id, function_id, user_id, indexes, results)
    except Exception as exc:  # noqa: BLE001 - the platform failed: end the inputs visibly, never lose them
        logger.exception("task for %s[%d:%d] failed", call_id, start, end)
        failure = Outcome(ok=False, error_type="ServiceError", message=f"the worker failed: {exc!r}")
        for idx in indexes:
            if idx not in results:
                results[idx] = failure
                try:
                    ctx.payloads.put_output(call_id, _envelope(ctx, user_id, idx, failure))
                except Exception:  # noqa: BLE001 - Redis may be the failure; the database still records it
                    logger.exception("cannot publish the failure of %s[%d]", call_id, idx)
    finally:
        ctx.recorder.finished(report, [_terminal(idx, outcome) for idx, outcome in results.items()])
        run_times = [outcome.duration for outcome in results.values() if outcome.ok]
        mean_us = int(sum(run_times) / len(run_times) * 1e6) if run_times else 0
        ctx.pending.finish(user_id, function_id, mean_us)


def _run(
    ctx: WorkerContext, call_id: str, function_id: str, user_id: int, indexes: list[int], results: dict[int, Outcome]
) -> None:
    def publish(idx: int, outcome: Outcome) -> None:
        ctx.payloads.put_output(call_id, _envelope(ctx, user_id, idx, outcome))
        results[idx] = outcome

    def fail_rest(outcome: Outcome) -> None:
        for idx in indexes:
            if idx not in results:
                publish(idx, outcome)

    spec = ctx.function(function_id)
    if spec is None or spec.user_id != user_id:
        return fail_rest(
            Outcome(ok=False, error_type="NotFoundError", message=f"function {function_id} does not exist")
        )
    pool = ctx.pool_for(spec)
    if pool is None:
        message = f"{spec.tag} needs a container, and this worker has no Docker engine"
        return fail_rest(Outcome(ok=False, error_type="ServiceError", message=message))
    payloads = ctx.payloads.get_inputs(call_id, range(indexes[0], indexes[-1] + 1))
    runner_spec = ctx.runner_spec(spec)
    runner = None
    try:
        for idx, payload in zip(indexes, payloads, strict=True):
            if payload is None:
                message = f"the input {idx} of {call_id} is missing from Redis (expired or flushed)"
                publish(idx, Outcome(ok=False, error_type="ServiceError", message=message))
                continue
            if runner is None:
                try:
                    runner = pool.acquire(runner_spec)
                except RunnerStartError as exc:
                    return fail_rest(
                        Outcome(ok=False, error_type="RemoteError", message=str(exc), traceback=exc.traceback)
                    )
            sinks = _Sinks(ctx, call_id, spec.app_id, spec.tag, user_id, idx)
            outcome = runner.call(payload, call_id=call_id, idx=idx, on_log=sinks.log, on_item=sinks.item)
            if sinks.items or outcome.items is not None:
                sinks.done(outcome)
            if outcome.runner_lost or idx == indexes[-1]:
                # Back to the pool before the output is published: the caller's next call may come at
                # once, to another slot of this worker, and should find this runner warm.
                pool.release(runner)
                runner = None
            publish(idx, outcome)
    finally:
        if runner is not None:
            pool.release(runner)


class _Sinks:
    """Where one input's printed text and generator items go: Redis streams the client reads live."""

    def __init__(self, ctx: WorkerContext, call_id: str, app_id: str, tag: str, user_id: int, idx: int) -> None:
        self.ctx, self.call_id, self.app_id, self.tag, self.user_id, self.idx = ctx, call_id, app_id, tag, user_id, idx
        self.items = 0

    def log(self, stream: str, text: str) -> None:
        fields = {
            protocol.LOG_INDEX: str(self.idx),
            protocol.LOG_STREAM: stream,
            protocol.LOG_TEXT: text,
            protocol.LOG_FUNCTION: self.tag,
        }
        try:
            self.ctx.payloads.put_log(self.call_id, self.app_id, fields)
        except Exception:  # noqa: BLE001 - a lost log line must not fail the call
            logger.warning("cannot store a log line of %s", self.call_id, exc_info=True)

    def item(self, n: int, data: bytes) -> None:
        fields: dict[str, Any] = {protocol.ITEM_INDEX: self.idx, protocol.ITEM_N: n}
        if len(data) > self.ctx.inline_limit:
            fields[protocol.OUT_BLOB] = self.ctx.payloads.put_blob_bytes(self.user_id, data)
        else:
            fields[protocol.OUT_DATA] = data
        self.ctx.payloads.put_item(self.call_id, fields)
        self.items += 1

    def done(self, outcome: Outcome) -> None:
        """The generator ended: a marker with the item count (and the status: a failure follows its items)."""
        status = CallStatus.COMPLETED if outcome.ok else CallStatus.FAILED
        self.ctx.payloads.put_item(
            self.call_id,
            {
                protocol.ITEM_INDEX: self.idx,
                protocol.ITEM_DONE: 1,
                protocol.ITEM_COUNT: self.items,
                protocol.OUT_STATUS: status.value,
            },
        )
