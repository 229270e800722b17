"""What one worker process holds: its id, database, Redis, warm pool and heartbeat thread.

Built once per worker process on first use, and torn down on worker shutdown (no runner leaks).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from minimodal import config, protocol
from minimodal.exception import InvalidError
from redis import Redis

from workers.pool import WarmPool
from workers.runtimes.base import Runtime
from workers.runtimes.process import ProcessRuntime

from ..database import Database
from ..models import FunctionRecord
from ..payloads import Payloads
from ..pending import PendingQueues

logger = logging.getLogger("minimodal.worker")


@dataclass
class FunctionSpec:
    id: str
    user_id: int
    tag: str
    code: bytes
    code_hash: str
    options: dict[str, Any]


def make_runtime(name: str) -> Runtime:
    if name == "process":
        return ProcessRuntime()
    raise InvalidError(f"MINIMODAL_WORKER_RUNTIME={name!r}: this worker knows only 'process'")


@dataclass
class WorkerContext:
    worker_id: str
    db: Database
    redis: Redis
    payloads: Payloads
    pending: PendingQueues
    pool: WarmPool
    concurrency: int
    inline_limit: int
    _functions: dict[str, FunctionSpec] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_config(cls) -> WorkerContext:
        redis_url = config.get("redis_url")
        if not redis_url:
            raise InvalidError("no Redis configured: set MINIMODAL_REDIS_URL or run `minimodal up`")
        redis = Redis.from_url(redis_url, health_check_interval=30)
        db = Database(config.database_url())
        db.create_all()
        return cls(
            worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            db=db,
            redis=redis,
            payloads=Payloads(redis, ttl=config.get("result_ttl")),
            pending=PendingQueues(redis),
            pool=WarmPool(make_runtime(config.get("worker_runtime"))),
            concurrency=config.get("worker_concurrency"),
            inline_limit=config.get("inline_payload_size"),
        )

    def function(self, function_id: str) -> FunctionSpec | None:
        """The function's code and options; cached, since a function id never changes its code."""
        spec = self._functions.get(function_id)
        if spec is None:
            with self.db.read() as session:
                record = session.get(FunctionRecord, function_id)
                if record is None:
                    return None
                spec = FunctionSpec(
                    record.id, record.user_id, record.tag, record.code, record.code_hash, dict(record.options)
                )
            self._functions[function_id] = spec
        return spec

    def start_heartbeat(self) -> None:
        threading.Thread(target=self._beat, name="mm-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        interval = config.get("heartbeat_seconds")
        while not self._stop.is_set():
            try:
                info = {
                    "worker_id": self.worker_id,
                    "runtime": self.pool.runtime.name,
                    "slots": self.concurrency,
                    **self.pool.counts(),
                    "at": time.time(),
                }
                self.redis.set(protocol.worker_key(self.worker_id), json.dumps(info), ex=int(interval * 5) + 1)
            except Exception:  # noqa: BLE001 - a missed beat is logged, the next one retries
                logger.warning("heartbeat to Redis failed", exc_info=True)
            self._stop.wait(interval)

    def close(self) -> None:
        self._stop.set()
        self.pool.shutdown()
        try:
            self.redis.delete(protocol.worker_key(self.worker_id))
        except Exception:  # noqa: BLE001 - Redis may already be gone at shutdown
            pass
        self.db.dispose()


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def get_context() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            _context = WorkerContext.from_config()
            _context.start_heartbeat()
        return _context


def close_context() -> None:
    global _context
    with _context_lock:
        if _context is not None:
            _context.close()
            _context = None
