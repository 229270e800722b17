"""What one worker process holds: its id, database, Redis, warm pool and heartbeat thread.

Built once per worker process on first use, and torn down on worker shutdown (no runner leaks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from minimodal import config, protocol
from minimodal.defaults import DEFAULT_SCALEDOWN_WINDOW
from minimodal.exception import InvalidError, ServiceError
from workers.pool import WarmPool
from workers.runtimes import docker_client
from workers.runtimes.base import RunnerSpec, Runtime
from workers.runtimes.process import ProcessRuntime

from ..database import Database
from ..models import FunctionRecord
from ..payloads import Payloads
from ..pending import PendingQueues
from .recorder import Recorder

logger = logging.getLogger("minimodal.worker")


@dataclass
class FunctionSpec:
    id: str
    user_id: int
    tag: str
    code: bytes
    code_hash: str
    options: dict[str, Any]
    image_tag: str | None
    app_id: str


def make_runtimes(setting: str) -> dict[str, Runtime]:
    """This worker's runtimes: always ``process``; ``docker`` too when an engine answers (unless told not to)."""
    if setting not in ("auto", "docker", "process"):
        raise InvalidError(f"MINIMODAL_WORKER_RUNTIME={setting!r}: give auto, docker or process")
    runtimes: dict[str, Runtime] = {"process": ProcessRuntime()}
    if setting == "process":
        return runtimes
    client = docker_client()
    if client is None:
        if setting == "docker":
            raise ServiceError("MINIMODAL_WORKER_RUNTIME=docker, but no Docker engine answers; is dockerd running?")
        logger.warning(
            "no Docker engine answers: this worker runs functions in runner processes only, "
            "and images cannot be built here"
        )
        return runtimes
    from workers.runtimes.docker import DockerRuntime

    runtimes["docker"] = DockerRuntime(client)
    return runtimes


@dataclass
class WorkerContext:
    worker_id: str
    db: Database
    redis: Redis
    payloads: Payloads
    pending: PendingQueues
    pools: dict[str, WarmPool]  # runtime name -> warm pool
    concurrency: int
    inline_limit: int
    recorder: Recorder
    _functions: dict[str, FunctionSpec] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _warm: set[str] = field(default_factory=set)  # functions this worker keeps a floor of runners for

    @classmethod
    def from_config(cls) -> WorkerContext:
        redis_url = config.get("redis_url")
        if not redis_url:
            raise InvalidError("no Redis configured: set MINIMODAL_REDIS_URL or run `minimodal up`")
        redis = Redis.from_url(redis_url, health_check_interval=30)
        db = Database(config.database_url())
        db.create_all()
        worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return cls(
            worker_id=worker_id,
            db=db,
            redis=redis,
            payloads=Payloads(redis, ttl=config.get("result_ttl"), stream_ttl=config.get("stream_ttl")),
            pending=PendingQueues(redis),
            pools={name: WarmPool(rt) for name, rt in make_runtimes(config.get("worker_runtime")).items()},
            concurrency=config.get("worker_concurrency"),
            inline_limit=config.get("inline_payload_size"),
            recorder=Recorder(db, worker_id),
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
                    record.id,
                    record.user_id,
                    record.tag,
                    record.code,
                    record.code_hash,
                    dict(record.options),
                    record.image_tag,
                    record.app_id,
                )
            self._functions[function_id] = spec
        return spec

    def runner_spec(self, spec: FunctionSpec) -> RunnerSpec:
        """What a runtime needs to start runners of this function: per user, code version and image."""
        options = spec.options
        return RunnerSpec(
            key=f"{spec.user_id}:{spec.code_hash}:{spec.image_tag or 'process'}",
            code=spec.code,
            timeout=float(options.get("timeout", 300)),
            scaledown_window=float(options.get("scaledown_window", DEFAULT_SCALEDOWN_WINDOW)),
            cpu=options.get("cpu"),
            memory=options.get("memory"),
            image=spec.image_tag,
            min_containers=int(options.get("min_containers", 0)),
            buffer_containers=int(options.get("buffer_containers", 0)),
            labels={
                "app": spec.app_id,
                "function": spec.tag,
                "function_id": spec.id,
                "user": str(spec.user_id),
                "home": str(config.home()),  # which stack: `minimodal down` removes its own containers only
            },
        )

    def pool_for(self, spec: FunctionSpec) -> WarmPool | None:
        return self.pools.get("docker" if spec.image_tag else "process")

    def keep_warm(self) -> None:
        """Give each running app's ``min_containers`` functions their floor; drop floors of stopped apps."""
        wanted = self.pending.warm_functions()
        for function_id in set(wanted) | set(self._warm):
            spec = self.function(function_id)
            pool = self.pool_for(spec) if spec else None
            if spec is None or pool is None:
                continue
            runner_spec = self.runner_spec(spec)
            if function_id not in wanted:
                runner_spec = dataclasses.replace(runner_spec, min_containers=0)
                self._warm.discard(function_id)
            else:
                self._warm.add(function_id)
            pool.ensure(runner_spec)

    def start_heartbeat(self) -> None:
        threading.Thread(target=self._beat, name="mm-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        interval = config.get("heartbeat_seconds")
        while not self._stop.is_set():
            try:
                counts = [pool.counts() for pool in self.pools.values()]
                info = {
                    "worker_id": self.worker_id,
                    "runtimes": sorted(self.pools),
                    "slots": self.concurrency,
                    "busy": sum(c["busy"] for c in counts),
                    "idle": sum(c["idle"] for c in counts),
                    "at": time.time(),
                }
                self.redis.set(protocol.worker_key(self.worker_id), json.dumps(info), ex=int(interval * 5) + 1)
                self.keep_warm()
            except Exception:  # noqa: BLE001 - a missed beat is logged, the next one retries
                logger.warning("heartbeat to Redis failed", exc_info=True)
            self._stop.wait(interval)

    def close(self) -> None:
        self._stop.set()
        self.recorder.close()
        for pool in self.pools.values():
            pool.shutdown()
            client = getattr(pool.runtime, "client", None)
            if client is not None:
                client.close()
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
