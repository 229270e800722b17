"""``GET /ready`` (no auth) and ``GET /stats`` (a user's own numbers; everyone's with an admin token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flask import Blueprint, current_app, g
from pydantic import BaseModel, ConfigDict, Field
from redis import ConnectionPool, Redis

from minimodal import config as mm_config

from .. import stats
from .auth import authenticate
from .schema import Doc, Reply, Timestamp
from .services import services

bp = Blueprint("stats", __name__)
doc = Doc("operations")

PROBE_TIMEOUT = 2.0  # seconds a readiness probe waits for Redis before calling it down


@dataclass
class ObserveSettings:
    heartbeat_seconds: float
    probe_redis: Redis  # the API's Redis with short timeouts, so that /ready answers even when Redis hangs


def settings() -> ObserveSettings:
    """Per-app settings of the operator endpoints, made on first use (config is never read at import)."""
    found = current_app.extensions.get("minimodal.observe")
    if found is None:
        pool = services().redis.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": PROBE_TIMEOUT, "socket_connect_timeout": PROBE_TIMEOUT}
        probe = Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))
        found = ObserveSettings(mm_config.get("heartbeat_seconds"), probe)
        current_app.extensions["minimodal.observe"] = found
    return found


def snapshot(user_id: int | None) -> dict[str, Any]:
    svc = services()
    return stats.snapshot(
        svc.db,
        svc.redis,
        user_id=user_id,
        heartbeat_seconds=settings().heartbeat_seconds,
        started_at=svc.started_at,
    )


class Check(Reply):
    model_config = ConfigDict(extra="allow")
    ok: bool | None = Field(description="null: could not be checked")
    error: str


class Checks(Reply):
    database: Check
    redis: Check
    dispatcher: Check
    workers: Check


class ReadyError(Reply):
    type: str
    message: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    failing: list[Literal["database", "redis", "dispatcher", "workers"]] = []
    checks: Checks
    error: ReadyError | None = None


class Summary(Reply):
    count: float
    avg: float | None
    p50: float | None
    p95: float | None
    max: float | None


class CallCounts(Reply):
    """Inputs of function calls by status."""

    queued: int
    dispatched: int
    running: int
    completed: int
    failed: int
    dead_letter: int
    cancelled: int


class UserNumbers(Reply):
    id: int
    name: str
    running: int = Field(description="tasks in flight (what the quota limits)")
    queued: int = Field(description="inputs waiting")
    quota: int
    weight: int
    share: float = Field(description="this user's part of all tasks in flight, 0-1")
    fair_share: float | None = Field(description="admin view: the part due by weight among users with work")


class WorkerNumbers(Reply):
    total: int
    idle: int
    busy: int
    unhealthy: int = Field(description="stale heartbeat")
    draining: int = Field(description="shutting down: finishing their tasks, taking no new ones")
    runtime: dict[str, int]
    capacity: int = Field(description="task slots of healthy workers")
    busy_runners: int
    idle_runners: int
    listing: list[dict[str, Any]] = Field(alias="list")


class DispatcherNumbers(Reply):
    alive: bool
    heartbeat_age: float | None


class RecentFailure(Reply):
    call_id: str
    idx: int
    status: Literal["failed", "dead_letter"]
    function_id: str
    function: str
    user: str
    error: str
    worker: str
    finished_at: Timestamp


class Stats(Reply):
    scope: Literal["user", "all"] = Field(description="`user`: the token's own numbers; `all`: an admin token's")
    user: str = Field(description="the token's user")
    at: float = Field(description="server time, seconds since the epoch")
    uptime: float = Field(description="seconds since this API process started")
    functions: int = Field(description="functions deployed")
    function_calls: int = Field(description="function calls accepted (a .map is one)")
    calls: CallCounts
    users: list[UserNumbers]
    workers: WorkerNumbers
    dispatcher: DispatcherNumbers
    queues: dict[str, int] = Field(description="Celery queue -> messages waiting")
    duration: Summary
    queued_wait: Summary
    function_list: list[dict[str, Any]]
    recent_failures: list[RecentFailure]


@bp.get("/ready")
@doc(
    "Readiness: database, Redis, a fresh dispatcher heartbeat, a live worker",
    reply=Readiness,
    errors=(503,),
    security="none",
    description="503 names the failing checks in `failing` (the body has the same shape, plus `error`).",
)
def ready():  # type: ignore[no-untyped-def]
    """200 when the database, Redis, the dispatcher and a worker all answer; 503 naming what does not."""
    svc = services()
    observe = settings()
    checks = stats.readiness(svc.db, observe.probe_redis, heartbeat_seconds=observe.heartbeat_seconds)
    failing = [name for name, check in checks.items() if check["ok"] is False]
    if not failing:
        return {"status": "ready", "checks": checks}
    message = "not ready: " + "; ".join(f"{name}: {checks[name]['error']}" for name in failing)
    body = {"status": "not ready", "failing": failing, "checks": checks}
    return {**body, "error": {"type": "ServiceError", "message": message}}, 503


@bp.get("/stats")
@doc("Numbers of what runs, waits and failed", reply=Stats)
def get_stats():  # type: ignore[no-untyped-def]
    authenticate()
    return {**snapshot(None if g.user.is_admin else g.user.id), "user": g.user.name}
