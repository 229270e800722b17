"""Sandboxes on the control plane: their records, their live state in Redis, and how they end.

A sandbox is a row in ``sandboxes`` (what it runs, who owns it, how it ended) and, while it lives, a
hash ``mm:sb:{id}:state`` (state, worker, returncode). It is scheduled as a call of one input: the API
writes its needs under its id in ``mm:fnneed`` and a pending entry ``sb|sb|0|1`` in its user's queue, so
it counts against the user's quota and fair share like any call and holds one slot (with its cpu and
memory) of the worker it is placed on until it ends. The dispatcher sends it as ``mm.sandbox`` instead
of ``mm.execute``; the worker's task is the sandbox's whole life (mm_app/tasks/sandbox.py).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from sqlalchemy import select

from minimodal import config, defaults, protocol
from minimodal.protocol import FunctionNeeds, SandboxState

from .database import Database
from .models import SandboxRecord, utcnow

logger = logging.getLogger("minimodal.sandboxes")

TERMINATED_CODE = 137  # the returncode of a sandbox (or process) ended by terminate(), app stop or a lost worker
TIMEOUT_CODE = 124  # the returncode of a sandbox ended by its timeout or idle_timeout


def needs(spec: dict[str, Any]) -> FunctionNeeds:
    """What a sandbox holds on its worker while it lives: its cpu, memory and GPUs, and a Docker engine."""
    gpu, gpu_count = protocol.parse_gpu(spec.get("gpu"))
    return FunctionNeeds(
        cpu=max(1, round(float(spec.get("cpu") or defaults.DEFAULT_SANDBOX_CPU) * 1000)),
        memory=int(spec.get("memory") or defaults.DEFAULT_SANDBOX_MEMORY),
        gpu=gpu,
        gpu_count=gpu_count,
        runtime="docker",
    )


def live_state(redis: Redis, sandbox_id: str) -> dict[str, str]:
    raw = redis.hgetall(protocol.sandbox_state_key(sandbox_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def view(record: SandboxRecord, live: dict[str, str] | None = None) -> dict[str, Any]:
    """What the API answers about a sandbox: the live state when Redis has it, else the record's."""
    live = live or {}
    state = live.get("state") or record.state
    code = live.get("returncode")
    returncode = int(code) if code not in (None, "") else record.returncode
    return {
        "sandbox_id": record.id,
        "app_id": record.app_id,
        "state": state,
        "returncode": returncode,
        "error": live.get("error") or record.error,
        "worker": live.get("worker") or record.worker,
        "tags": record.tags or {},
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "command": record.spec.get("cmd", []),
        "tunnels": {
            str(port): {"encrypted": t["encrypted"]} if t["encrypted"] else {**t} for port, t in tunnels(live).items()
        },
    }


def tunnels(live: dict[str, str]) -> dict[int, dict[str, Any]]:
    """A running sandbox's published ports (its live state's): container port -> host, port, encrypted."""
    try:
        return {int(port): t for port, t in json.loads(live.get("tunnels") or "{}").items()}
    except (ValueError, TypeError):
        return {}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()  # SQLite gives naive UTC times


def end(
    db: Database | None,
    redis: Redis,
    sandbox_id: str,
    state: SandboxState,
    returncode: int | None,
    error: str | None = None,
) -> bool:
    """Record a sandbox's end once (the first end wins); wake every waiter. False if it had ended already."""
    key = protocol.sandbox_state_key(sandbox_id)
    ttl = config.get("stream_ttl")
    pipe = redis.pipeline(transaction=True)
    pipe.hget(key, "state")
    current = pipe.execute()[0]
    if current is not None and SandboxState(current.decode()).terminal:
        return False
    fields = {"state": state.value, "returncode": "" if returncode is None else str(returncode), "error": error or ""}
    pipe = redis.pipeline(transaction=True)
    pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # types-redis: Mapping keys are invariant
    pipe.hdel(key, "tunnels")  # its ports ended with it
    pipe.expire(key, ttl)
    pipe.xadd(protocol.sandbox_events_key(sandbox_id), {"proc": "", **fields})
    pipe.expire(protocol.sandbox_events_key(sandbox_id), ttl)
    pipe.hdel(protocol.function_needs_key(), sandbox_id)
    pipe.rpush(protocol.sandbox_control_key(sandbox_id), json.dumps({"op": "terminate", "ended": True}))
    pipe.expire(protocol.sandbox_control_key(sandbox_id), 60)
    pipe.execute()
    if db is not None:
        with db.write() as session:
            record = session.get(SandboxRecord, sandbox_id)
            if record is not None and not SandboxState(record.state).terminal:
                record.state, record.returncode, record.error = state.value, returncode, error
                record.finished_at = utcnow()
    return True


def started(
    db: Database, redis: Redis, sandbox_id: str, worker_id: str, tunnels: dict[int, dict[str, Any]] | None = None
) -> None:
    """The sandbox runs on ``worker_id``; ``tunnels``: each published container port -> host, port, encrypted."""
    pipe = redis.pipeline(transaction=True)
    pipe.hset(
        protocol.sandbox_state_key(sandbox_id),
        mapping={"state": SandboxState.RUNNING.value, "worker": worker_id, "tunnels": json.dumps(tunnels or {})},
    )
    pipe.execute()
    with db.write() as session:
        record = session.get(SandboxRecord, sandbox_id)
        if record is not None:
            record.state, record.worker, record.started_at = SandboxState.RUNNING.value, worker_id, utcnow()


def request_terminate(db: Database, redis: Redis, sandbox_id: str) -> None:
    """Ask the owning worker to end the sandbox; one still queued ends here (its task will find it ended)."""
    state = live_state(redis, sandbox_id).get("state")
    if state == SandboxState.RUNNING.value:
        redis.rpush(protocol.sandbox_control_key(sandbox_id), json.dumps({"op": "terminate"}))
        redis.expire(protocol.sandbox_control_key(sandbox_id), config.get("stream_ttl"))
    else:
        end(db, redis, sandbox_id, SandboxState.TERMINATED, TERMINATED_CODE, "terminated before it started")


def terminate_app(db: Database, redis: Redis, app_id: str) -> int:
    """``app stop``: terminate the app's sandboxes that have not ended."""
    with db.read() as session:
        ids = list(
            session.scalars(
                select(SandboxRecord.id).where(
                    SandboxRecord.app_id == app_id,
                    SandboxRecord.state.in_([SandboxState.QUEUED.value, SandboxState.RUNNING.value]),
                )
            )
        )
    for sandbox_id in ids:
        request_terminate(db, redis, sandbox_id)
    return len(ids)


def lost(db: Database | None, redis: Redis, sandbox_id: str, worker_id: str) -> bool:
    """The worker that ran the sandbox is gone: it ended (its container ends with the worker's socket).

    Returns False when the sandbox had not started there (its task was never run): then it may be queued again.
    """
    state = live_state(redis, sandbox_id)
    if state.get("state") in (None, SandboxState.QUEUED.value):
        return False
    end(db, redis, sandbox_id, SandboxState.TERMINATED, TERMINATED_CODE, f"its worker {worker_id} was lost")
    return True
