"""``GET /ready`` (no auth) and ``GET /stats`` (a user's own numbers; everyone's with an admin token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, g
from redis import ConnectionPool, Redis

from minimodal import config as mm_config

from .. import stats
from .auth import authenticate
from .services import services

bp = Blueprint("stats", __name__)

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


@bp.get("/ready")
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
def get_stats():  # type: ignore[no-untyped-def]
    authenticate()
    return {**snapshot(None if g.user.is_admin else g.user.id), "user": g.user.name}
