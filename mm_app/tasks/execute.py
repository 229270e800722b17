"""``mm.execute``: run a run of inputs of one function call in a warm runner and publish the outputs.

Each output is appended to the call's Redis stream the moment it exists, so a waiting client wakes at
once; status changes go to the database through the worker's :class:`~.recorder.Recorder`, off the
call's path. Whatever happens, every input the task took gets an output and a terminal status, and
its user's and function's slots are freed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from celery import signals

from minimodal import protocol
from minimodal.exception import Error, InvalidError
from minimodal.protocol import CallStatus
from minimodal.retries import Retries
from mm_app import keyspace
from mm_app.keyspace import InflightTask, PendingEntry
from workers.pool import WarmPool
from workers.runtimes.base import Outcome, RunnerSpec, RunnerStartError
from workers.runtimes.shared import call_shared

from .. import objects
from ..celery_app import app
from . import volumes
from .caps import LogBudget
from .context import WorkerContext, close_context, existing_context, open_context
from .lines import LineBuffer
from .recorder import Ended

logger = logging.getLogger("minimodal.worker")


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    open_context(app)


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    ctx = existing_context(app)
    if ctx is not None:
        ctx.drain()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    close_context(app)


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


PUBLISH_EVERY = 0.005  # seconds the output of a short input may wait to be published with the next ones
PUBLISH_BATCH = 100  # ...or until this many are waiting
NOT_RETRYABLE = {"NotFoundError", "ServiceError"}  # the function or its input is gone: a retry cannot help
MAX_REQUEUES = 5  # times an input the platform failed (not its code) is queued again before it fails


@dataclass
class _Task:
    """One delivery of ``mm.execute``: which inputs, which attempt, and where the results go."""

    ctx: WorkerContext
    call_id: str
    function_id: str
    user_id: int
    indexes: list[int]
    attempt: int  # this attempt's number over the inputs' life
    first: int  # the attempt this retry sequence began with (a dead letter retried starts a new one)
    queue: str
    task_id: str  # this delivery's Celery id, its key in the in-flight ledger
    ended: dict[int, Ended] = field(default_factory=dict)
    run_times: list[float] = field(default_factory=list)
    unpublished: list[tuple[dict[str, Any], Ended]] = field(default_factory=list)  # settled, output not yet out
    oldest_unpublished: float = 0.0
    timer: threading.Timer | None = None  # publishes what waits once PUBLISH_EVERY has passed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def settle(self, idx: int, outcome: Outcome, policy: dict[str, float] | None, startup: float | None = None) -> None:
        """Publish the input's output, or schedule its retry; record how the attempt ended."""
        error = None if outcome.ok else (outcome.message or "failed")[:2000]
        if outcome.ok:
            self.run_times.append(outcome.duration)
        retries_used = self.attempt - self.first
        if (
            not outcome.ok
            and policy
            and outcome.error_type not in NOT_RETRYABLE
            and retries_used < policy["max_retries"]
            and self._retry(idx, Retries.delay(policy, retries_used + 1))
        ):
            self.ended[idx] = Ended(
                idx, CallStatus.QUEUED.value, self.attempt, False, error, outcome.duration or None, startup=startup
            )
            return
        if outcome.ok:
            status = CallStatus.COMPLETED
        elif policy and policy["max_retries"] > 0:
            status = CallStatus.DEAD_LETTER
        else:
            status = CallStatus.FAILED
        ended = Ended(idx, status.value, self.attempt, outcome.ok, error, outcome.duration or None, outcome.traceback)
        envelope = _envelope(self.ctx, self.user_id, idx, outcome)
        with self.lock:
            if not self.unpublished:
                self.oldest_unpublished = time.monotonic()
            self.unpublished.append((envelope, dataclasses.replace(ended, startup=startup)))

    def settled(self, idx: int) -> bool:
        with self.lock:
            return idx in self.ended or any(ended.idx == idx for _, ended in self.unpublished)

    def publish(self, *, unless_fresh: bool = False) -> None:
        """Append the settled outputs to the call's stream, in one round trip; they end then.

        Outputs of a task of many short inputs go in batches: with ``unless_fresh`` only once the oldest
        has waited PUBLISH_EVERY seconds or PUBLISH_BATCH are waiting (a timer publishes the rest when the
        next input runs long), and all of them when the task ends.
        """
        with self.lock:
            if not self.unpublished:
                return
            waited = time.monotonic() - self.oldest_unpublished
            if unless_fresh and len(self.unpublished) < PUBLISH_BATCH and waited < PUBLISH_EVERY:
                if self.timer is None:
                    # The next input may run long: the timer publishes what waits once PUBLISH_EVERY is up.
                    self.timer = threading.Timer(PUBLISH_EVERY - waited, self._publish_late)
                    self.timer.daemon = True
                    self.timer.start()
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            batch, self.unpublished = self.unpublished, []
            try:
                entries = self.ctx.payloads.put_outputs(self.call_id, [envelope for envelope, _ in batch])
            except BaseException:
                self.unpublished = batch + self.unpublished  # still to publish: the task's end tries again
                raise
            for (_, ended), entry in zip(batch, entries, strict=True):
                self.ended[ended.idx] = dataclasses.replace(ended, output_entry=entry)

    def _publish_late(self) -> None:
        try:
            self.publish()
        except Exception:  # noqa: BLE001 - the task publishes them when it ends, or requeues them
            logger.warning("cannot publish outputs of %s yet", self.call_id, exc_info=True)

    def requeue(self, idx: int, outcome: Outcome) -> None:
        """The platform failed this input (no runner, a worker fault): queue it again for another worker.

        It counts as an attempt; after MAX_REQUEUES the input fails with the platform's error.
        """
        key = keyspace.requeue_key(self.call_id)
        times = self.ctx.redis.hincrby(key, str(idx), 1)
        self.ctx.redis.expire(key, self.ctx.payloads.ttl)
        if times > MAX_REQUEUES:
            self.settle(idx, outcome, None)
            return
        self.ctx.pending.enqueue(self.user_id, PendingEntry(self.call_id, self.function_id, idx, idx + 1))
        self.ended[idx] = Ended(idx, CallStatus.QUEUED.value, self.attempt, False, (outcome.message or "")[:2000])

    def _retry(self, idx: int, delay: float) -> bool:
        """Send the input again to this worker after ``delay`` s (a Celery countdown).

        The retry goes in the in-flight ledger first, holding what this task held, so that if this
        worker dies during the backoff the dispatcher re-queues the input like any task of a dead worker.
        """
        retry_id = str(uuid.uuid4())
        raw = self.ctx.redis.hget(keyspace.inflight_key(), self.task_id)
        mine = InflightTask.decode(raw) if raw else None
        seconds, micros = self.ctx.redis.time()
        now = seconds + micros / 1e6
        self.ctx.pending.hold(
            retry_id,
            InflightTask(
                self.user_id,
                self.function_id,
                self.call_id,
                idx,
                idx + 1,
                self.ctx.worker_id,
                mine.cpu if mine else 0,
                mine.memory if mine else 0,
                mine.gpu if mine else "",
                mine.gpu_count if mine else 0,
                mine.cost if mine else 0,
                now + delay,  # counted as dispatched when it is due, for the lost-task sweep
                "retry",
            ),
        )
        try:
            app.send_task(
                keyspace.TASK_EXECUTE,
                args=[self.call_id, self.function_id, self.user_id, idx, idx + 1, self.attempt + 1, self.first],
                queue=self.queue,
                countdown=delay,
                task_id=retry_id,
            )
        except Exception:  # noqa: BLE001 - the broker refused: the input ends with this attempt's error
            logger.exception("cannot schedule the retry of %s[%d]", self.call_id, idx)
            self.ctx.pending.finish(self.user_id, self.function_id, task_id=retry_id)
            return False
        logger.info("retrying %s[%d] in %.2f s (attempt %d)", self.call_id, idx, delay, self.attempt + 1)
        return True


@app.task(name=keyspace.TASK_EXECUTE, bind=True, acks_late=True, ignore_result=True)
def execute(
    self: Any, call_id: str, function_id: str, user_id: int, start: int, end: int, attempt: int = 1, first: int = 1
) -> None:
    ctx = open_context(self.app)
    queue = (self.request.delivery_info or {}).get("routing_key") or keyspace.QUEUE_CPU
    task = _Task(ctx, call_id, function_id, user_id, list(range(start, end)), attempt, first, queue, self.request.id)
    report = ctx.recorder.running(call_id, function_id, user_id, task.indexes)
    stranded = False  # inputs that could not be re-queued: the task stays in the ledger for the dispatcher
    try:
        _run(task)
    except Exception as exc:  # noqa: BLE001 - the platform failed: try the inputs elsewhere, never lose them
        logger.exception("task for %s[%d:%d] failed", call_id, start, end)
        ctx.breaker.failure()
        failure = Outcome(ok=False, error_type="ServiceError", message=f"the worker failed: {exc!r}")
        try:
            task.publish()  # what ran before the failure keeps its output
        except Exception:  # noqa: BLE001 - then those inputs are queued again below
            task.unpublished = []
        for idx in task.indexes:
            if idx not in task.ended:
                try:
                    task.requeue(idx, failure)
                except Exception:  # noqa: BLE001 - Redis itself is failing (restarting, say)
                    # Left in the ledger, the task is reclaimed by the dispatcher's lost-task sweep once
                    # Redis answers again: its inputs without an output go back to the queue.
                    logger.exception("cannot requeue %s[%d]; the dispatcher will reclaim it", call_id, idx)
                    task.ended[idx] = Ended(idx, CallStatus.QUEUED.value, attempt, False, failure.message)
                    stranded = True
        try:
            task.publish()  # inputs out of requeues end with the platform's error
        except Exception:  # noqa: BLE001 - as above: the lost-task sweep re-queues those without an output
            logger.exception(
                "cannot publish the outputs of %s[%d:%d]; the dispatcher will reclaim them", call_id, start, end
            )
            for _, ended in task.unpublished:
                task.ended[ended.idx] = dataclasses.replace(ended, status=CallStatus.QUEUED.value)
            stranded = True
    finally:
        ctx.recorder.finished(report, list(task.ended.values()))
        if not stranded:
            mean_us = int(sum(task.run_times) / len(task.run_times) * 1e6) if task.run_times else 0
            ctx.pending.finish(user_id, function_id, mean_us, task_id=self.request.id)  # its ledger entry


def _run(task: _Task) -> None:
    try:
        _run_inputs(task)
    finally:
        task.publish()


def _run_inputs(task: _Task) -> None:
    ctx = task.ctx

    def fail_rest(outcome: Outcome) -> None:
        for idx in task.indexes:
            if not task.settled(idx):
                task.settle(idx, outcome, None)

    spec = ctx.function(task.function_id)
    if spec is None or spec.user_id != task.user_id:
        message = f"function {task.function_id} does not exist"
        return fail_rest(Outcome(ok=False, error_type="NotFoundError", message=message))
    payloads = ctx.payloads.get_inputs_unless_cancelled(task.call_id, range(task.indexes[0], task.indexes[-1] + 1))
    if payloads is None:
        return  # cancelled (mm_app/cancel.py): its inputs have their cancelled outputs already
    pool = ctx.pool_for(spec)
    if pool is None:
        message = f"{spec.tag} needs a container, and this worker has no Docker engine"
        return fail_rest(Outcome(ok=False, error_type="ServiceError", message=message))
    policy = spec.options.get("retries")
    try:
        env = ctx.secret_env(spec.options.get("secrets"), task.user_id)
    except Error as exc:  # a deleted secret, or a key that cannot decrypt it: the call's own failure
        return fail_rest(Outcome(ok=False, error_type=type(exc).__name__, message=str(exc)))
    mounted: dict[str, str] = spec.options.get("volumes") or {}
    runner_spec = ctx.runner_spec(spec)
    if runner_spec.shared:  # @concurrent / @batched: the inputs run at once, sharing runners
        return _run_shared(task, pool, runner_spec, payloads, policy, env, mounted)
    runner = None
    startup: float | None = None
    try:
        for idx, payload in zip(task.indexes, payloads, strict=True):
            if payload is None:
                message = f"the input {idx} of {task.call_id} is missing from Redis (expired or flushed)"
                task.settle(idx, Outcome(ok=False, error_type="ServiceError", message=message), policy)
                continue
            if runner is None:
                try:
                    runner = pool.acquire(runner_spec)
                    # A cold start is paid by the input that waited for it: the "container start" phase.
                    startup, runner.started_in = runner.started_in, None
                except RunnerStartError as exc:
                    outcome = Outcome(ok=False, error_type=exc.error_type, message=str(exc), traceback=exc.traceback)
                    if exc.infrastructure:
                        ctx.breaker.failure()
                    for rest in task.indexes:
                        if task.settled(rest):
                            continue
                        if exc.infrastructure:
                            task.requeue(rest, outcome)
                        else:
                            task.settle(rest, outcome, policy)
                    return None
            sinks = _Sinks(ctx, task.call_id, spec.app_id, spec.tag, task.user_id, idx)
            outcome = _call(task, runner.call, payload, idx, sinks, env, mounted)
            if sinks.items or outcome.items is not None:
                sinks.done(outcome)
            if outcome.runner_lost or idx == task.indexes[-1]:
                # Back to the pool before the output is published: the caller's next call may come at
                # once, to another slot of this worker, and should find this runner warm.
                pool.release(runner)
                runner = None
            task.settle(idx, outcome, policy, startup)
            # Only a short input's output waits for company: batching saves nothing on a long one.
            short = outcome.duration < PUBLISH_EVERY and not sinks.items and outcome.items is None
            task.publish(unless_fresh=short and idx != task.indexes[-1])
            startup = None
    finally:
        if runner is not None:
            pool.release(runner)
    return None


def _run_shared(
    task: _Task,
    pool: WarmPool,
    runner_spec: RunnerSpec,
    payloads: list[bytes | None],
    policy: dict[str, float] | None,
    env: dict[str, str] | None,
    mounted: dict[str, str],
) -> None:
    """A function whose runners take several inputs at once: each input holds one share of a runner.

    The task's inputs run at once (up to ``max_inputs``, a thread each), so that they can overlap, and
    batch with each other and with other tasks' inputs on the same runner; each is settled on its own.
    """
    ctx = task.ctx
    spec = ctx.function(task.function_id)
    assert spec is not None

    def one(idx: int, payload: bytes | None) -> None:
        if payload is None:
            message = f"the input {idx} of {task.call_id} is missing from Redis (expired or flushed)"
            return task.settle(idx, Outcome(ok=False, error_type="ServiceError", message=message), policy)
        try:
            runner = pool.acquire(runner_spec)
        except RunnerStartError as exc:
            outcome = Outcome(ok=False, error_type=exc.error_type, message=str(exc), traceback=exc.traceback)
            if exc.infrastructure:
                ctx.breaker.failure()
                return task.requeue(idx, outcome)
            return task.settle(idx, outcome, policy)
        startup, runner.started_in = runner.started_in, None
        sinks = _Sinks(ctx, task.call_id, spec.app_id, spec.tag, task.user_id, idx)
        try:
            outcome = _call(task, functools.partial(call_shared, runner), payload, idx, sinks, env, mounted)
        finally:
            pool.release(runner)
        if sinks.items or outcome.items is not None:
            sinks.done(outcome)
        task.settle(idx, outcome, policy, startup)
        task.publish()  # each input's output as soon as it has one (the inputs end in any order)
        return None

    width = min(runner_spec.max_inputs, len(task.indexes))
    with ThreadPoolExecutor(width, thread_name_prefix="mm-input") as threads:
        for _ in threads.map(one, task.indexes, payloads):
            pass


def _call(
    task: _Task,
    call: Callable[..., Outcome],
    payload: bytes,
    idx: int,
    sinks: _Sinks,
    env: dict[str, str] | None,
    mounted: dict[str, str],
) -> Outcome:
    """Run one input on a runner (``call``: its ``call``, or ``call_shared`` of it), between volume sync and commit."""
    ctx = task.ctx
    for volume_id in mounted.values():  # each input starts from the committed contents
        volumes.cache(ctx.redis).sync(volume_id)
    sinks.container = getattr(getattr(call, "__self__", None), "container_id", None)  # the runner's ct- id
    try:
        outcome = call(
            payload,
            call_id=task.call_id,
            idx=idx,
            on_log=sinks.log,
            on_item=sinks.item,
            on_request=lambda request: _platform_request(ctx, task.user_id, mounted, request, task.call_id),
            env=env,
        )
    finally:
        sinks.lines.close()  # a last line without its end is the input's too
    ctx.breaker.success()  # a runner ran the input: whatever the code did, the platform worked
    for volume_id in mounted.values():  # what the input wrote is committed when it ends
        volumes.cache(ctx.redis).commit(volume_id)
    return outcome


def _platform_request(
    ctx: WorkerContext, user_id: int, mounted: dict[str, str], request: Any, call_id: str
) -> dict[str, Any]:
    """A request of the running code: a Dict or Queue operation, a commit or reload of a mounted volume, or an
    API request of a function calling a function (``mm_app/tasks/forward.py``)."""
    if isinstance(request, dict) and request.get("kind") == "http":
        return ctx.forward().forward(user_id, call_id, request)
    if isinstance(request, dict) and request.get("kind") == "volume" and request.get("op") in ("commit", "reload"):
        volume_id = objects.resolve(ctx.redis, user_id, request)
        if volume_id not in mounted.values():
            raise InvalidError(f"volume {volume_id} is not mounted in this function; add it to volumes={{...}}")
        cache = volumes.cache(ctx.redis)
        changed = cache.commit(volume_id) if request["op"] == "commit" else cache.sync(volume_id)
        return {"id": volume_id, "changed": changed}
    return objects.handle(ctx.redis, user_id, request)


class _Sinks:
    """Where one input's printed text and generator items go: Redis streams the client reads live."""

    def __init__(self, ctx: WorkerContext, call_id: str, app_id: str, tag: str, user_id: int, idx: int) -> None:
        self.ctx, self.call_id, self.app_id, self.tag, self.user_id, self.idx = ctx, call_id, app_id, tag, user_id, idx
        self.items = 0
        self.budget = LogBudget(ctx.caps)
        self.lines = LineBuffer(self._store, ctx.caps.max_log_line)
        self.source, self.seq = uuid.uuid4().hex[:12], 0  # this attempt's lines, numbered for de-duplication
        self.container: str | None = None

    def log(self, stream: str, text: str) -> None:
        self.lines.write(stream, text)  # whole lines reach _store (mm_app/tasks/lines.py)

    def _store(self, lines: list[tuple[str, str]]) -> None:
        entries: list[dict[str, str]] = []
        for stream, line in lines:
            text = self.budget.take(line)
            if text is None:
                break
            entries.append(
                {
                    protocol.LOG_INDEX: str(self.idx),
                    protocol.LOG_STREAM: stream,
                    protocol.LOG_TEXT: text,
                    protocol.LOG_FUNCTION: self.tag,
                    protocol.LOG_SOURCE: self.source,
                    protocol.LOG_SEQ: str(self.seq + len(entries)),
                    **({protocol.LOG_CONTAINER: self.container} if self.container else {}),
                }
            )
        self.seq += len(entries)
        try:
            if entries:
                self.ctx.payloads.put_logs(self.call_id, self.app_id, entries)
        except Exception:  # noqa: BLE001 - a lost log line must not fail the call
            logger.warning("cannot store a log line of %s", self.call_id, exc_info=True)

    def item(self, n: int, data: bytes) -> None:
        data = self.ctx.caps.item(n, data)
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
