"""``mm.sandbox``: one sandbox's whole life on the worker the dispatcher placed it on.

The task holds its Celery thread (the slot the take reserved) until the sandbox ends. It starts the
container, then serves the sandbox's control list ``mm:sb:{id}:ctl`` (exec, terminate, snapshot) pushed
by the API, and ends it at its ``timeout``, after ``idle_timeout`` seconds without an exec running,
starting or reading stdin, when its entrypoint exits, or on ``terminate``. Every process's output goes
chunk by chunk, as it arrives, into Redis streams that clients long-poll from a cursor (so a client
that reconnects loses nothing); stdin comes from a Redis list per process, read by a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

from celery import signals

from minimodal import config, protocol
from minimodal.protocol import SandboxState
from workers.runtimes.base import RunnerStartError
from workers.sandbox import ContainerSpec, ExecProcess, SandboxContainer, SandboxStartError, remove_orphans

from .. import registry, sandboxes, vault
from ..celery_app import app
from ..models import SandboxRecord
from . import volumes
from .caps import TRUNCATED
from .context import WorkerContext, open_context

logger = logging.getLogger("minimodal.worker")

POLL = 0.5  # seconds between checks of deadlines when no control request comes
STDIN_POLL = 1.0  # seconds a stdin thread blocks on its list before it checks that its process still runs

_lives: dict[str, _Life] = {}
_lives_lock = threading.Lock()


class _Life:
    def __init__(self, ctx: WorkerContext, sandbox_id: str, user_id: int, record: SandboxRecord) -> None:
        self.ctx, self.id, self.user_id = ctx, sandbox_id, user_id
        self.spec: dict[str, Any] = dict(record.spec)
        self.app_id = record.app_id
        self.redis = ctx.redis
        self.ttl = config.get("stream_ttl")
        self.output_cap = config.get("sandbox_output_bytes")
        self.keys: set[str] = set()
        self.running: dict[str, ExecProcess] = {}
        self.lock = threading.Lock()
        self.last_active = time.monotonic()
        self.container: SandboxContainer | None = None
        self.env: dict[str, str] = {}
        self.stop = threading.Event()

    # ---- streams ----

    def _touch(self, key: str) -> str:
        if key not in self.keys:
            self.keys.add(key)
            self.redis.expire(key, self.ttl + int(self.spec.get("timeout", 0)))
        return key

    def output(self, process_id: str) -> Any:
        """The callback that stores one process's chunks: at most ``sandbox_output_bytes`` per stream, then a marker.

        Past the cap the process runs on and its output is still read (so it never blocks on a full pipe),
        but dropped: a command printing gigabytes keeps Redis at the cap.
        """
        written = {1: 0, 2: 0}

        def on_output(fd: int, chunk: bytes | None) -> None:
            key = self._touch(protocol.sandbox_output_key(self.id, process_id, fd))
            if chunk is not None:
                room = self.output_cap - written[fd]
                if room < 0:
                    return  # past the cap and its marker: dropped
                written[fd] += len(chunk)
                if len(chunk) > room:
                    name = "stdout" if fd == 1 else "stderr"
                    marker = (
                        f"\n{TRUNCATED} this process wrote over {self.output_cap:,} bytes to {name} "
                        "(MINIMODAL_SANDBOX_OUTPUT_BYTES); the rest of it is dropped\n"
                    )
                    chunk = chunk[:room] + marker.encode()
                    written[fd] = self.output_cap + 1
            try:
                self.redis.xadd(key, {"eof": "1"} if chunk is None else {"d": chunk})
                self.redis.expire(key, self.ttl + int(self.spec.get("timeout", 0)))
            except Exception:  # noqa: BLE001 - Redis failing: the sandbox goes on, this chunk is lost
                logger.warning("cannot store output of %s/%s", self.id, process_id, exc_info=True)
            if chunk is None and fd == 2 and process_id == protocol.SANDBOX_ENTRYPOINT:
                self.redis.rpush(protocol.sandbox_control_key(self.id), json.dumps({"op": "_entrypoint_ended"}))

        return on_output

    def _process_ended(self, process_id: str, code: int) -> None:
        with self.lock:
            self.running.pop(process_id, None)
            self.last_active = time.monotonic()
        key = self._touch(protocol.sandbox_events_key(self.id))
        self.redis.xadd(key, {"proc": process_id, "returncode": str(code)})

    def _stdin_reader(self, process_id: str, write: Any, close: Any, alive: Any) -> None:
        key = protocol.sandbox_stdin_key(self.id, process_id)
        while alive() and not self.stop.is_set():
            try:
                popped = self.redis.blpop([key], timeout=STDIN_POLL)
            except Exception:  # noqa: BLE001 - Redis restarting; try again
                time.sleep(STDIN_POLL)
                continue
            if popped is None:
                continue
            self.last_active = time.monotonic()
            data = popped[1]
            if data == b"":
                close()
                return
            write(data)

    # ---- life ----

    def start(self) -> None:
        ctx, spec = self.ctx, self.spec
        with ctx.db.read() as session:
            self.env = vault.environment(session, self.user_id, spec.get("secrets") or [])
        mounted: dict[str, str] = spec.get("volumes") or {}
        for volume_id in mounted.values():
            volumes.cache(self.redis).sync(volume_id)
        pool = ctx.pools.get("docker")
        if pool is None:
            raise SandboxStartError("this worker has no Docker engine; sandboxes run in containers")
        runtime: Any = pool.runtime
        block_network = bool(spec.get("block_network"))
        encrypted, unencrypted = spec.get("encrypted_ports") or [], spec.get("unencrypted_ports") or []
        try:  # a networked sandbox joins the runners' bridge: no other container, host or private range
            network = None if block_network else runtime.network_name()
        except RunnerStartError as exc:
            raise SandboxStartError(str(exc)) from exc
        self.container = SandboxContainer(
            runtime.client,
            ContainerSpec(
                sandbox_id=self.id,
                image=spec["image"],
                cmd=list(spec.get("cmd") or []),
                env=self.env,
                workdir=spec.get("workdir"),
                cpu=spec.get("cpu"),
                memory=spec.get("memory"),
                block_network=block_network,
                network=network,
                ports=sorted({*encrypted, *unencrypted}),
                publish_address=config.get("worker_address"),
                mounts=volumes.mounts(self.redis, {"volumes": mounted}),
                labels={
                    "user": str(self.user_id),
                    "app": self.app_id or "",
                    "worker": ctx.worker_id,
                    "home": str(config.home()),
                },
                runtime=runtime.engine_runtime(block_network),
            ),
            self.output(protocol.SANDBOX_ENTRYPOINT),
        )
        tunnels = {
            port: {"host": host, "port": host_port, "encrypted": port not in unencrypted}
            for port, (host, host_port) in self.container.published().items()
        }
        sandboxes.started(ctx.db, self.redis, self.id, ctx.worker_id, tunnels)
        threading.Thread(
            target=self._stdin_reader,
            args=(protocol.SANDBOX_ENTRYPOINT, self.container.write_stdin, self.container.close_stdin, lambda: True),
            daemon=True,
        ).start()

    def serve(self) -> tuple[SandboxState, int | None, str | None]:
        """Serve control requests until the sandbox must end; return how it ended."""
        assert self.container is not None
        deadline = time.monotonic() + float(self.spec.get("timeout") or 0)
        idle = float(self.spec.get("idle_timeout") or 0)
        control = protocol.sandbox_control_key(self.id)
        while True:
            now = time.monotonic()
            if now >= deadline:
                return SandboxState.TIMEOUT, sandboxes.TIMEOUT_CODE, f"ran past its timeout of {self.spec['timeout']} s"
            with self.lock:
                busy = bool(self.running)
            if idle and not busy and now - self.last_active >= idle:
                return SandboxState.TIMEOUT, sandboxes.TIMEOUT_CODE, f"idle for {idle:g} s (idle_timeout)"
            code = self.container.wait(0)
            if code is not None:
                return SandboxState.FINISHED, code, None
            wait = min(POLL, max(0.01, deadline - now))
            if idle and not busy:
                wait = min(wait, max(0.01, idle - (now - self.last_active)))
            popped = self.redis.blpop([control], timeout=wait)
            if popped is None:
                continue
            request = json.loads(popped[1])
            op = request.get("op")
            if op == "_entrypoint_ended":
                code = self.container.wait(2)
                if code is not None:
                    return SandboxState.FINISHED, code, None
            elif op == "terminate":
                return SandboxState.TERMINATED, sandboxes.TERMINATED_CODE, request.get("reason")
            elif op == "exec":
                self.exec(request)
            elif op == "snapshot":
                self.snapshot(request)

    def exec(self, request: dict[str, Any]) -> None:
        assert self.container is not None
        process_id = request["proc"]
        self.last_active = time.monotonic()
        env = dict(self.env)
        try:
            if request.get("secrets"):
                with self.ctx.db.read() as session:
                    env.update(vault.environment(session, self.user_id, request["secrets"]))
            process = self.container.exec(
                list(request["cmd"]),
                workdir=request.get("workdir"),
                env=env,
                timeout=request.get("timeout"),
                pty=bool(request.get("pty")),
            )
        except Exception as exc:  # noqa: BLE001 - Docker refused it, or a secret is gone: the process fails
            on_output = self.output(process_id)
            on_output(2, f"minimodal: cannot exec {request['cmd']!r}: {exc}\n".encode())
            on_output(1, None)
            on_output(2, None)
            self._process_ended(process_id, 126)
            return
        with self.lock:
            self.running[process_id] = process
        process.start_pumping(self.output(process_id), lambda code: self._process_ended(process_id, code))
        threading.Thread(
            target=self._stdin_reader,
            args=(process_id, process.write, process.close_stdin, lambda: process_id in self.running),
            daemon=True,
        ).start()

    def snapshot(self, request: dict[str, Any]) -> None:
        assert self.container is not None
        reply_key = protocol.sandbox_reply_key(self.id, request["id"])
        try:
            tag = self.container.snapshot(
                f"{self.id.lower()}-{request['id'][:8].lower()}", registry=config.get("registry")
            )
            reply = {"image": tag}
        except Exception as exc:  # noqa: BLE001 - the commit failed: the caller gets the reason
            reply = {"error": f"cannot snapshot the sandbox: {exc}"}
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(reply_key, json.dumps(reply))
        pipe.expire(reply_key, 60)
        pipe.execute()

    def close(self) -> None:
        self.stop.set()
        if self.container is not None:
            self.container.kill()
        for volume_id in (self.spec.get("volumes") or {}).values():
            try:
                volumes.cache(self.redis).commit(volume_id)
            except Exception:  # noqa: BLE001 - the volume keeps what was committed before
                logger.warning("cannot commit volume %s of sandbox %s", volume_id, self.id, exc_info=True)
        for process_id in list(self.running):
            self._process_ended(process_id, sandboxes.TERMINATED_CODE)


@app.task(name=protocol.TASK_SANDBOX, bind=True, acks_late=True, ignore_result=True)
def run_sandbox(self: Any, sandbox_id: str, user_id: int) -> None:
    _run_sandbox(open_context(self.app), sandbox_id, user_id, self.request.id)


def _run_sandbox(ctx: WorkerContext, sandbox_id: str, user_id: int, task_id: str) -> None:
    try:
        with ctx.db.read() as session:
            record = session.get(SandboxRecord, sandbox_id)
            if record is not None:
                session.expunge(record)
        live = sandboxes.live_state(ctx.redis, sandbox_id)
        if record is None or record.user_id != user_id:
            return
        if SandboxState(live.get("state") or record.state).terminal or record.state != SandboxState.QUEUED.value:
            ctx.redis.hdel(protocol.function_needs_key(), sandbox_id)
            return  # terminated while queued, or a redelivery of a sandbox that ran already
        life = _Life(ctx, sandbox_id, user_id, record)
        with _lives_lock:
            _lives[sandbox_id] = life
        try:
            life.start()
            state, code, error = life.serve()
        except SandboxStartError as exc:
            state, code, error = SandboxState.FAILED, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - the platform failed under the sandbox: it ends, saying why
            logger.exception("sandbox %s failed", sandbox_id)
            state, code, error = SandboxState.FAILED, None, f"the worker failed: {exc!r}"
        finally:
            life.close()
            with _lives_lock:
                _lives.pop(sandbox_id, None)
        sandboxes.end(ctx.db, ctx.redis, sandbox_id, state, code, error)
        logger.info("sandbox %s ended: %s (%s)", sandbox_id, state.value, code)
    finally:
        ctx.pending.finish(user_id, sandbox_id, 0, task_id=task_id)


@signals.worker_shutting_down.connect
def _terminate_all(**_: Any) -> None:
    """A worker stopping ends its sandboxes (Celery waits for running tasks: they must return)."""
    with _lives_lock:
        lives = list(_lives.values())
    for life in lives:
        with contextlib.suppress(Exception):
            life.redis.rpush(
                protocol.sandbox_control_key(life.id), json.dumps({"op": "terminate", "reason": "its worker stopped"})
            )


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    if config.get("worker_runtime") != "process":  # off the start path: the worker takes work meanwhile
        thread = threading.Thread(target=_remove_orphans, args=(open_context(app),), name="mm-sandbox-orphans")
        thread.daemon = True
        thread.start()


def _remove_orphans(ctx: WorkerContext) -> None:
    """A worker restarted after a crash: remove this stack's sandbox containers no live worker owns."""
    pool = ctx.pools.get("docker")
    if pool is None:
        return
    try:
        live, _ = registry.capacities(ctx.redis, ctx.pending.policy.dead_after)
        keep = set()
        for key in ctx.redis.scan_iter(protocol.sandbox_state_key("*")):
            state = {k.decode(): v.decode() for k, v in ctx.redis.hgetall(key).items()}
            if state.get("state") == SandboxState.RUNNING.value and state.get("worker") in live:
                keep.add(key.decode().split(":")[2])
        removed = remove_orphans(pool.runtime.client, str(config.home()), keep)  # type: ignore[attr-defined]
        if removed:
            logger.warning("removed %d sandbox container(s) left by a worker that died", removed)
    except Exception:  # noqa: BLE001 - best effort: the dead-worker sweep has ended those sandboxes anyway
        logger.warning("cannot look for orphaned sandbox containers", exc_info=True)
