"""What one worker process holds: its id, database, Redis, warm pool and heartbeat thread.

Built once per worker process when it is ready (or by its first task, if that comes first) and kept on
the worker's Celery app: a task takes it from there once, at its boundary (``open_context(self.app)``),
and passes it to everything below. Torn down on worker shutdown (no runner leaks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from redis import Redis
from sqlalchemy import select

from minimodal import config
from minimodal.defaults import DEFAULT_BASE_IMAGES_SECONDS, DEFAULT_SCALEDOWN_WINDOW
from minimodal.exception import InvalidError, ServiceError
from mm_app import keyspace
from mm_app.keyspace import WorkerCapacity
from workers.images import base_pythons
from workers.pool import WarmPool
from workers.runtimes import docker_client
from workers.runtimes.base import RunnerSpec, Runtime
from workers.runtimes.process import ProcessRuntime

from .. import recovery, registry, scaler, vault
from ..database import Database
from ..models import FunctionRecord, FunctionSpecRecord, SourceFileRecord
from ..payloads import Payloads
from ..pending import PendingQueues
from ..registry import inputs_per_runner
from . import containers, volumes
from .breaker import CircuitBreaker
from .caps import OutputCaps
from .forward import Forwarder
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
    source: dict[str, Any] | None = None  # {"module", "files": {path: sha}}: imported by name in the runner
    app_functions: dict[str, str] = field(default_factory=dict)  # tag -> function id, for the whole app


def make_runtimes(setting: str) -> dict[str, Runtime]:
    """This worker's runtimes: always ``process``; ``docker`` too when an engine answers (unless told not to)."""
    if setting not in ("auto", "docker", "process"):
        raise InvalidError(f"MINIMODAL_WORKER_RUNTIME={setting!r}: give auto, docker or process")
    runtimes: dict[str, Runtime] = {"process": ProcessRuntime(python=config.get("runner_python"))}
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

    runtimes["docker"] = DockerRuntime(client, container_runtime=config.get("container_runtime"))
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
    capacity: WorkerCapacity | None = None  # what it offers the scheduler (set by from_config)
    draining: bool = False  # shutting down: takes no new placements
    forwarder: Forwarder | None = None  # API requests of functions calling functions (made on first use)
    _bundles: dict[str, bytes] = field(default_factory=dict)  # manifest digest -> zip of the source files
    _runner_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # runner key -> (function id, tag)
    _events_seen: dict[str, int] = field(default_factory=dict)  # runtime -> pool events forwarded so far
    _beat_now: threading.Event = field(default_factory=threading.Event)  # beat at once (offered slots changed)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker.from_config)  # platform failures stop intake
    caps: OutputCaps = field(default_factory=OutputCaps.from_config)  # item size and log volume per input
    _base_pythons: tuple[float, list[str] | None] = (0.0, None)  # when listed, what debian_slim can build here

    @classmethod
    def from_config(cls) -> WorkerContext:
        redis_url = config.get("redis_url")
        if not redis_url:
            raise InvalidError("no Redis configured: set MINIMODAL_REDIS_URL or run `minimodal up`")
        redis = Redis.from_url(redis_url, health_check_interval=30)
        db = Database(config.database_url())
        db.create_all()
        # `python -m mm_app worker` picks the id, so that its Celery queue is the one it consumes.
        worker_id = config.get("worker_id") or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        blanks = {"process": config.get("worker_blank_runners"), "docker": config.get("worker_blank_containers")}
        runtimes = make_runtimes(config.get("worker_runtime"))
        idle = config.get("worker_blank_idle_seconds")
        pools = {
            name: WarmPool(rt, blank_runners=blanks.get(name, 0), blank_idle_seconds=idle)
            for name, rt in runtimes.items()
        }
        if "process" in pools:  # every runner process starts alike: have blanks before the first call
            pools["process"].prestart(
                RunnerSpec(key="blank", code=b"", timeout=300, scaledown_window=0, labels={"home": str(config.home())})
            )
        beat_now = threading.Event()
        concurrency = config.get("worker_concurrency")
        gpu = config.get("worker_gpu")
        try:
            gpus = keyspace.parse_gpu_inventory(registry.detect_gpus() if gpu is None else gpu)
        except ValueError as exc:
            raise InvalidError(f"MINIMODAL_WORKER_GPU={gpu!r}: {exc}") from None
        capacity = WorkerCapacity(
            id=worker_id,
            queue=keyspace.worker_queue(worker_id),
            slots=concurrency,
            cpu=max(1, round(config.get("worker_cpu") * 1000)),
            memory=config.get("worker_memory"),
            gpus=gpus,
            docker="docker" in pools,
            sandbox=getattr(pools["docker"].runtime, "container_runtime", "") if "docker" in pools else "",
        )
        return cls(
            worker_id=worker_id,
            db=db,
            redis=redis,
            payloads=Payloads(redis, ttl=config.get("result_ttl"), stream_ttl=config.get("stream_ttl")),
            pending=PendingQueues(redis),
            pools=pools,
            concurrency=concurrency,
            inline_limit=config.get("inline_payload_size"),
            recorder=Recorder(db, worker_id),
            capacity=capacity,
            # A breaker that opens or closes changes the slots this worker offers: tell the dispatcher
            # at once, not at the next beat, or it keeps placing work on a worker that fails it.
            breaker=CircuitBreaker.from_config(on_change=lambda _state: beat_now.set()),
            _beat_now=beat_now,
        )

    def secret_env(self, secret_ids: list[str] | None, user_id: int) -> dict[str, str] | None:
        """The variables of a function's secrets, read (and decrypted) once per task: updates apply at once."""
        if not secret_ids:
            return None
        with self.db.read() as session:
            return vault.environment(session, user_id, secret_ids)

    def function(self, function_id: str) -> FunctionSpec | None:
        """The function's code and options; cached, since a function id never changes its code."""
        spec = self._functions.get(function_id)
        if spec is None:
            with self.db.read() as session:
                record = session.get(FunctionRecord, function_id)
                if record is None:
                    return None
                extra = session.get(FunctionSpecRecord, function_id)
                source = (extra.spec or {}).get("source") if extra is not None else None
                siblings = session.execute(
                    select(FunctionRecord.tag, FunctionRecord.id).where(FunctionRecord.app_id == record.app_id)
                ).all()
                spec = FunctionSpec(
                    record.id,
                    record.user_id,
                    record.tag,
                    record.code,
                    record.code_hash,
                    dict(record.options),
                    record.image_tag,
                    record.app_id,
                    source,
                    {tag: fid for tag, fid in siblings if "@" not in tag},  # not the with_options variants
                )
            self._functions[function_id] = spec
        return spec

    def runner_spec(self, spec: FunctionSpec) -> RunnerSpec:
        """What a runtime needs to start runners of this function: per user, code version and image."""
        options = spec.options
        key = f"{spec.user_id}:{spec.code_hash}:{spec.image_tag or 'process'}"
        if spec.source:  # hydrated with this app's function ids: its runners serve this app only
            key += f":{spec.app_id}"
        width = inputs_per_runner(options)
        batch_wait = options.get("batch_wait_ms", 0) if options.get("batch_max_size") else None
        if width > 1 or batch_wait is not None:  # such a runner serves only functions that ask for the same
            key += f":x{width}" + (f":b{batch_wait}" if batch_wait is not None else "")
        self._runner_keys[key] = (spec.id, spec.tag)  # to name the function in scale events
        load: dict[str, Any] = {"app": {"app_id": spec.app_id, "functions": spec.app_functions}}
        if spec.source:
            load["import"] = {"module": spec.source["module"]}
        return RunnerSpec(
            source=self.source_bundle(spec.source["files"]) if spec.source else None,
            load=load,
            key=key,
            code=spec.code,
            timeout=float(options.get("timeout", 300)),
            scaledown_window=float(options.get("scaledown_window", DEFAULT_SCALEDOWN_WINDOW)),
            cpu=options.get("cpu"),
            memory=options.get("memory"),
            image=spec.image_tag,
            min_containers=int(options.get("min_containers", 0)),
            buffer_containers=int(options.get("buffer_containers", 0)),
            block_network=bool(options.get("block_network", False)),
            max_inputs=width,
            batch_wait_ms=batch_wait,
            mounts=volumes.mounts(self.redis, options),
            labels={
                "app": spec.app_id,
                "function": spec.tag,
                "function_id": spec.id,
                "user": str(spec.user_id),
                "home": str(config.home()),  # which stack: `minimodal down` removes its own containers only
            },
        )

    def source_bundle(self, files: dict[str, str]) -> bytes:
        """The zip of an app's shipped source files (pinned in the database), cached by its manifest."""
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        bundle = self._bundles.get(digest)
        if bundle is None:
            with self.db.read() as session:
                rows = dict(
                    session.execute(
                        select(SourceFileRecord.sha, SourceFileRecord.data).where(
                            SourceFileRecord.sha.in_(set(files.values()))
                        )
                    ).all()
                )
            missing = sorted(set(files.values()) - set(rows))
            if missing:
                raise InvalidError(f"the app's source files {missing[:3]} are not stored: deploy or run the app again")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path, sha in sorted(files.items()):
                    archive.writestr(path, rows[sha])
            bundle = buffer.getvalue()
            while len(self._bundles) >= 32:  # the most recent apps' sources only
                self._bundles.pop(next(iter(self._bundles)))
            self._bundles[digest] = bundle
        return bundle

    def pool_for(self, spec: FunctionSpec) -> WarmPool | None:
        pool = self.pools.get("docker" if spec.image_tag else "process")
        wanted = spec.options.get("container_runtime")
        if wanted and (pool is None or getattr(pool.runtime, "container_runtime", None) != wanted):
            return None  # never run a function asking for gVisor under anything else (placement avoids it)
        return pool

    def keep_warm(self) -> None:
        """Give each running app's ``min_containers`` functions their floor; drop floors of stopped apps,
        and stop the runners of stopped apps (idle ones now, busy ones when their input ends)."""
        retired = {m.decode() for m in self.redis.smembers(keyspace.retired_functions_key())}
        if retired:
            keys = {key for key, (function_id, _) in list(self._runner_keys.items()) if function_id in retired}
            for each in self.pools.values():
                each.retire(keys - each.retired)
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
        from .containers import ControlServer

        self.control = ControlServer(self)  # container stop/exec/tty requests (mm_app/tasks/containers.py)
        self.control.start()

    def _beat(self) -> None:
        interval = config.get("heartbeat_seconds")
        while not self._stop.is_set():
            try:
                self.beat_once(interval)
                self.keep_warm()
            except Exception:  # noqa: BLE001 - a missed beat is logged, the next one retries
                logger.warning("heartbeat to Redis failed", exc_info=True)
            if self._beat_now.wait(interval):
                self._beat_now.clear()

    def beat_once(self, interval: float) -> None:
        """Register this worker's capacity (unless draining), refresh its info, forward pool scale events."""
        counts = [pool.counts() for pool in self.pools.values()]
        runners: dict[str, int] = {}
        for pool in self.pools.values():
            for key, (function_id, _) in list(self._runner_keys.items()):
                n = pool.runners(key)
                if n:
                    runners[function_id] = runners.get(function_id, 0) + n
        assert self.capacity is not None
        # The circuit breaker decides how many slots to offer: none while open, one probe half-open.
        capacity = dataclasses.replace(self.capacity, offered=self.breaker.slots(self.concurrency))
        info = {
            "worker_id": self.worker_id,
            "queue": capacity.queue,
            "queues": [capacity.queue] + ([keyspace.QUEUE_BUILD] if capacity.docker else []),
            "runtimes": sorted(self.pools),
            "slots": capacity.open_slots,
            "breaker": self.breaker.state,
            "cpu": capacity.cpu / 1000,
            "memory": capacity.memory,
            "gpus": capacity.gpus,
            **self._pythons(),
            "busy": sum(c["busy"] for c in counts),
            "idle": sum(c["idle"] for c in counts),
            "blank": sum(pool.blanks() for pool in self.pools.values()),  # started, no function loaded yet
            "active": active_tasks(),
            "runners": runners,
            "draining": self.draining,
            "containers": containers.describe(self),  # `minimodal container list`
            "at": time.time(),
        }
        ttl = int(interval * 5) + 1
        if self.draining:
            self.redis.set(keyspace.worker_key(self.worker_id), json.dumps(info), ex=ttl)
        else:
            registry.beat(self.redis, capacity, info, ttl)
        self._forward_pool_events()

    def _pythons(self) -> dict[str, Any]:
        """What the API checks an image's Python against: the runner processes' version and, with Docker,
        the versions Image.debian_slim(python_version=) can build here (the engine's base images)."""
        info: dict[str, Any] = {}
        process = self.pools["process"].runtime if "process" in self.pools else None
        if isinstance(process, ProcessRuntime):
            info["python"] = process.python_version
        if "docker" in self.pools:
            at, pythons = self._base_pythons
            if pythons is None or time.monotonic() - at >= DEFAULT_BASE_IMAGES_SECONDS:
                client = self.pools["docker"].runtime.client  # type: ignore[attr-defined]
                try:
                    # Not at every beat: a slow engine must not delay the heartbeat often. A base built
                    # while the worker runs counts within that period.
                    pythons = base_pythons(client, config.get("debian_slim_image"))
                except Exception:  # noqa: BLE001 - the engine may be restarting; keep what it had
                    logger.warning("cannot list the base images of the Docker engine", exc_info=True)
                self._base_pythons = (time.monotonic(), pythons)
            if pythons is not None:
                info["pythons"] = pythons
        return info

    def _forward_pool_events(self) -> None:
        """Each runner start or stop of the warm pools, as a ``runners`` scale event."""
        for name, pool in self.pools.items():
            seen = self._events_seen.get(name, 0)
            fresh = pool.events[seen:]
            self._events_seen[name] = seen + len(fresh)
            for at, key, change in fresh:
                function_id, tag = self._runner_keys.get(key, ("", ""))
                event = {
                    "at": at,
                    "kind": "runners",
                    "worker": self.worker_id,
                    "runtime": name,
                    "function": function_id,
                    "tag": tag,
                    "change": change,
                    "runners": pool.runners(key),
                }
                scaler.record(self.redis, event)
                logger.info("scale: %s a %s runner of %s on %s", change, name, tag or key[:16], self.worker_id)

    def drain(self) -> None:
        """Shutting down: take no new placements (running tasks finish; unstarted ones are re-queued at close)."""
        self.draining = True
        try:
            registry.unregister(self.redis, self.worker_id)
        except Exception:  # noqa: BLE001 - Redis may be gone; the dispatcher will find the worker dead
            logger.warning("cannot unregister worker %s", self.worker_id, exc_info=True)

    def forward(self) -> Forwarder:
        if self.forwarder is None:
            self.forwarder = Forwarder(self.redis, self.worker_id)
        return self.forwarder

    def close(self) -> None:
        self._stop.set()
        self._beat_now.set()
        if getattr(self, "control", None) is not None:
            self.control.stop()
        self.draining = True
        self.recorder.close()
        if self.forwarder is not None:
            with contextlib.suppress(Exception):
                self.forwarder.close()
        for pool in self.pools.values():
            pool.shutdown()
            client = getattr(pool.runtime, "client", None)
            if client is not None:
                client.close()
        try:
            registry.unregister(self.redis, self.worker_id)
            # Tasks placed here that never ran (sent while it shut down): back to the head of their queues.
            for task_id, task in recovery.ledger(self.redis).items():
                if task.worker_id == self.worker_id:
                    todo = recovery.unfinished_runs(self.redis, task)
                    self.pending.reclaim(task_id, task.user_id, todo, counter="reclaimed")
            registry.forget(self.redis, self.worker_id)
            self.redis.delete(keyspace.worker_key(self.worker_id))
        except Exception:  # noqa: BLE001 - Redis may already be gone at shutdown
            logger.warning("cannot hand back worker %s's tasks; the dispatcher will", self.worker_id, exc_info=True)
        self.db.dispose()


# Celery task ids of mm.execute tasks this process holds, for the heartbeat: the dispatcher re-queues a
# task its live worker never started (see mm_app.recovery). A task is held from its receipt, which for a
# retry is the start of its countdown (Celery keeps such a task in a timer, not among reserved requests).
_active: set[str] = set()
_HELD_TASKS = (keyspace.TASK_EXECUTE, keyspace.TASK_SANDBOX)
_active_lock = threading.Lock()


def active_tasks() -> list[str]:
    """Tasks this worker holds: received (a retry waiting out its backoff too), waiting for a thread, running."""
    from celery.worker import state as worker_state

    with _active_lock:
        held = set(_active)
    held.update(request.id for request in list(worker_state.reserved_requests))
    return sorted(held)


@signals.task_received.connect
def _task_received(request: Any = None, **_: Any) -> None:
    if request is not None and request.name in _HELD_TASKS:
        with _active_lock:
            _active.add(request.id)


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id and getattr(task, "name", None) in _HELD_TASKS:
        with _active_lock:
            _active.add(task_id)


@signals.task_postrun.connect
def _task_ended(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        with _active_lock:
            _active.discard(task_id)


@signals.task_revoked.connect
def _task_dropped(request: Any = None, **_: Any) -> None:
    if request is not None:
        with _active_lock:
            _active.discard(request.id)


_ATTRIBUTE = "minimodal_worker_context"  # where a worker's Celery app holds its context
_context_lock = threading.Lock()


def open_context(celery_app: Any) -> WorkerContext:
    """The context of the worker that runs ``celery_app``: built, and its heartbeat started, on first use."""
    with _context_lock:
        ctx: WorkerContext | None = getattr(celery_app, _ATTRIBUTE, None)
        if ctx is None:
            ctx = WorkerContext.from_config()
            ctx.start_heartbeat()
            setattr(celery_app, _ATTRIBUTE, ctx)
        return ctx


def existing_context(celery_app: Any) -> WorkerContext | None:
    """The worker's context if it was built (a worker shutting down before any use has none)."""
    return getattr(celery_app, _ATTRIBUTE, None)


def close_context(celery_app: Any) -> None:
    """Stop the worker's heartbeat, runners and recorder, and hand back the tasks it never started."""
    with _context_lock:
        ctx: WorkerContext | None = getattr(celery_app, _ATTRIBUTE, None)
        if ctx is not None:
            ctx.close()
            setattr(celery_app, _ATTRIBUTE, None)
