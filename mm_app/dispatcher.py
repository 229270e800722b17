"""The dispatcher: moves work from per-user pending queues to the fixed Celery queue, fairly.

Each pass goes round the users with pending work, taking one task's worth of inputs from each user
that is under their concurrency quota, and repeats until nobody can take more; then it sleeps until
woken (a new call, a finished task, a quota change) or one second passes. One Celery queue serves
every user: a queue per user collapses kombu's Redis transport (../shared/reference/celery_notes.md).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from redis import Redis

from minimodal import config, protocol

from .pending import PendingQueues

logger = logging.getLogger("minimodal.dispatcher")


class Dispatcher:
    def __init__(
        self, redis: Redis, celery_app: Any, *, default_quota: int, task_target_ms: int, max_inputs_per_task: int
    ) -> None:
        self.redis = redis
        self.celery_app = celery_app
        self.pending = PendingQueues(redis)
        self.default_quota = default_quota
        self.target_us = task_target_ms * 1000
        self.max_inputs = max_inputs_per_task
        self.dispatched = 0
        self._offset = 0  # rotates the starting user between passes
        self._queues: dict[str, str] = {}  # function id -> Celery queue; a function's queue never changes

    @classmethod
    def from_config(cls, redis: Redis, celery_app: Any) -> Dispatcher:
        return cls(
            redis,
            celery_app,
            default_quota=config.get("default_quota"),
            task_target_ms=config.get("task_target_ms"),
            max_inputs_per_task=config.get("max_inputs_per_task"),
        )

    def dispatch_pass(self) -> int:
        """Dispatch until no user can take more; return how many tasks were sent."""
        sent = 0
        users = self.pending.users_with_work()
        if not users:
            return 0
        self._offset = (self._offset + 1) % len(users)
        order = users[self._offset :] + users[: self._offset]
        with self.celery_app.producer_or_acquire() as producer:  # one broker connection for the pass
            while order:
                still = []
                for user_id in order:
                    entry = self.pending.take(
                        user_id,
                        default_quota=self.default_quota,
                        target_us=self.target_us,
                        max_inputs=self.max_inputs,
                    )
                    if entry is None:
                        continue
                    try:
                        self.celery_app.send_task(
                            protocol.TASK_EXECUTE,
                            args=[entry.call_id, entry.function_id, user_id, entry.start, entry.end],
                            queue=self._queue(entry.function_id),
                            producer=producer,
                        )
                    except Exception:
                        self.pending.put_back(user_id, entry)  # the broker refused it: nothing is lost
                        raise
                    sent += 1
                    still.append(user_id)
                order = still
        self.dispatched += sent
        return sent

    def _queue(self, function_id: str) -> str:
        queue = self._queues.get(function_id)
        if queue is None:
            raw = self.redis.hget(protocol.function_queue_key(), function_id)
            queue = raw.decode() if raw else protocol.QUEUE_CPU
            self._queues[function_id] = queue
        return queue

    def run(self, stop: threading.Event, idle_wait: float = 1.0) -> None:
        logger.info("dispatcher running")
        beat = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - beat >= 1.0:
                    self.redis.set(protocol.dispatcher_heartbeat_key(), str(time.time()), ex=10)
                    beat = time.monotonic()
                self.dispatch_pass()
                self.pending.wait_for_wake(idle_wait)
            except Exception:  # noqa: BLE001 - Redis may restart; keep trying
                logger.exception("dispatch pass failed; retrying in 1 s")
                stop.wait(1.0)


def main() -> None:
    from .celery_app import app as celery_app

    redis_url = config.get("redis_url")
    if not redis_url:
        raise SystemExit("minimodal dispatcher: set MINIMODAL_REDIS_URL or run `minimodal up`")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Dispatcher.from_config(Redis.from_url(redis_url, health_check_interval=30), celery_app).run(stop)
