"""Operator numbers from the database and Redis: what runs, what waits, what failed, and how fast.

:func:`snapshot` answers ``GET /stats`` and feeds the dashboard and ``GET /metrics``; :func:`readiness`
answers ``GET /ready``; :func:`latency_histograms` gives the cumulative latency buckets of ``/metrics``.

Where each number comes from:

- functions, function calls, inputs by status, queued inputs per user, durations, failures: the
  database (the worker's recorder writes statuses off the call's path, so they lag by a few ms; an
  input handed to Celery but not started yet still reads ``queued``, since nobody records dispatch).
- running per user: Redis ``mm:running`` (tasks in flight, what the quota counts, not inputs).
- workers: their heartbeats (``mm:worker:*``); a heartbeat older than :data:`STALE_BEATS` intervals
  marks its worker unhealthy before the key expires.
- queue depth: the length of each Celery queue's Redis list (kombu's layout, priorities included).

A ``user_id`` limits the per-user numbers (functions, calls, the per-user row, failures, durations)
to that user; ``None`` is an admin's view of everyone. Workers and queues are shared, so everyone
sees them.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from sqlalchemy import case, func, select, text

from minimodal import protocol
from minimodal.protocol import CallStatus

from .database import Database
from .models import CallRecord, FunctionRecord, InputRecord, UserRecord
from .registry import live_workers

RECENT_SAMPLE = 1000  # finished inputs that the duration average and percentiles are taken over
RECENT_FAILURES = 20  # failed and dead-lettered inputs listed, newest first
STALE_BEATS = 3  # a worker whose heartbeat is older than this many intervals is unhealthy
DISPATCHER_STALE_SECONDS = 5.0  # the dispatcher beats every second; this much silence means it is gone
FIXED_QUEUES = (protocol.QUEUE_CPU, protocol.QUEUE_CONTAINER, protocol.QUEUE_BUILD)
_KOMBU_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priority p > 0 of queue q in "q\x06\x16p"
_KOMBU_PRIORITIES = (3, 6, 9)
# Latency buckets (seconds) of the /metrics histograms: from a warm call's milliseconds to long batch jobs.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_WAITING = (CallStatus.QUEUED.value, CallStatus.DISPATCHED.value)
_FAILED = (CallStatus.FAILED.value, CallStatus.DEAD_LETTER.value)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite gives back naive datetimes; they were written in UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def summary(values: list[float]) -> dict[str, Any]:
    """Count, mean, median, 95th percentile (nearest rank) and max of ``values``, in seconds."""
    if not values:
        return {"count": 0, "avg": None, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 6)

    return {
        "count": len(ordered),
        "avg": round(sum(ordered) / len(ordered), 6),
        "p50": rank(0.5),
        "p95": rank(0.95),
        "max": round(ordered[-1], 6),
    }


def worker_health(worker: dict[str, Any], now: float, heartbeat_seconds: float) -> tuple[float, bool]:
    """A heartbeat's age in seconds and whether its worker counts as healthy."""
    age = max(0.0, now - float(worker.get("at", 0)))
    return round(age, 3), age <= STALE_BEATS * heartbeat_seconds


def _worker_queues(worker: dict[str, Any]) -> list[str]:
    named = worker.get("queues") or ([worker["queue"]] if worker.get("queue") else [])
    return [q for q in named if isinstance(q, str)]


def queue_names(workers: list[dict[str, Any]]) -> list[str]:
    """The fixed Celery queues, plus any that a worker's heartbeat names (``queue`` or ``queues``)."""
    names = list(FIXED_QUEUES)
    for worker in workers:
        names += [q for q in _worker_queues(worker) if q not in names]
    return names


def queue_depths(redis: Redis, names: list[str]) -> dict[str, int]:
    """Messages waiting in each Celery queue (not those a worker has taken: kombu's ``unacked``)."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
        for priority in _KOMBU_PRIORITIES:
            pipe.llen(f"{name}{_KOMBU_PRIORITY_SEP}{priority}")
    lengths = pipe.execute()
    step = 1 + len(_KOMBU_PRIORITIES)
    return {name: sum(lengths[i * step : (i + 1) * step]) for i, name in enumerate(names)}


def workers_summary(workers: list[dict[str, Any]], now: float, heartbeat_seconds: float) -> dict[str, Any]:
    """Totals over live workers, and one row per worker."""
    rows: list[dict[str, Any]] = []
    runtimes: dict[str, int] = {}
    for worker in sorted(workers, key=lambda w: str(w.get("worker_id"))):
        age, healthy = worker_health(worker, now, heartbeat_seconds)
        busy = int(worker.get("busy", 0))
        draining = bool(worker.get("draining"))
        rows.append(
            {
                "id": worker.get("worker_id"),
                "runtimes": worker.get("runtimes", []),
                "slots": int(worker.get("slots", 0)),
                "busy": busy,
                "idle": int(worker.get("idle", 0)),
                "heartbeat_age": age,
                "healthy": healthy,
                "state": "unhealthy" if not healthy else ("busy" if busy else "idle"),
                "draining": draining,  # shutting down: finishes its tasks, takes no new ones
                "active_tasks": len(worker.get("active") or []),
                "queues": _worker_queues(worker),
            }
        )
        for runtime in worker.get("runtimes", []):
            runtimes[runtime] = runtimes.get(runtime, 0) + 1
    healthy_rows = [r for r in rows if r["healthy"]]
    return {
        "total": len(rows),
        "idle": sum(1 for r in rows if r["state"] == "idle"),
        "busy": sum(1 for r in rows if r["state"] == "busy"),
        "unhealthy": sum(1 for r in rows if r["state"] == "unhealthy"),
        "draining": sum(1 for r in rows if r["draining"]),
        "runtime": runtimes,
        "capacity": sum(r["slots"] for r in healthy_rows),
        "busy_runners": sum(r["busy"] for r in healthy_rows),
        "idle_runners": sum(r["idle"] for r in healthy_rows),
        "list": rows,
    }


def _owned(query: Any, user_id: int | None) -> Any:
    return query if user_id is None else query.where(CallRecord.user_id == user_id)


def _functions_detail(connection: Any, redis: Redis, user_id: int | None, workers: list[dict[str, Any]]) -> list[dict]:
    """Functions with work in flight or a warm floor: tasks in flight, min/max containers, mean run time."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(protocol.function_running_key())
    pipe.hgetall(protocol.warm_key())
    pipe.hgetall(protocol.function_limit_key())
    running, warm, limits = ({k.decode(): int(v) for k, v in h.items()} for h in pipe.execute())
    reported = [w["runners"] for w in workers if isinstance(w.get("runners"), dict)]
    warm_runners: dict[str, int] = {}  # function id -> runners (busy or idle) across workers
    for per_function in reported:
        for function_id, count in per_function.items():
            warm_runners[function_id] = warm_runners.get(function_id, 0) + int(count)
    ids = sorted((set(running) | set(warm) | set(warm_runners)) - {""})
    if not ids:
        return []
    query = select(FunctionRecord.id, FunctionRecord.tag, FunctionRecord.user_id, FunctionRecord.app_id).where(
        FunctionRecord.id.in_(ids)
    )
    if user_id is not None:
        query = query.where(FunctionRecord.user_id == user_id)
    found = connection.execute(query).all()
    pipe = redis.pipeline(transaction=False)
    for row in found:
        pipe.hget(protocol.function_stats_key(row.id), "avg_us")
    averages = pipe.execute()
    return [
        {
            "id": row.id,
            "tag": row.tag,
            "app_id": row.app_id,
            "user_id": row.user_id,
            "in_flight": running.get(row.id, 0),
            "min_containers": warm.get(row.id, 0),
            "max_containers": limits.get(row.id),
            "avg_run": round(int(avg) / 1e6, 6) if avg else None,
            # None when no worker's heartbeat reports runners per function (older workers)
            "warm_runners": warm_runners.get(row.id, 0) if reported else None,
        }
        for row, avg in zip(found, averages, strict=True)
    ]


def snapshot(
    db: Database, redis: Redis, *, user_id: int | None, heartbeat_seconds: float, started_at: float
) -> dict[str, Any]:
    """Everything ``GET /stats`` answers, for one user (``user_id``) or for everyone (``None``)."""
    now = time.time()
    with db.read_core() as connection:
        functions = connection.scalar(
            select(func.count()).select_from(FunctionRecord).where(FunctionRecord.user_id == user_id)
            if user_id is not None
            else select(func.count()).select_from(FunctionRecord)
        )
        function_calls = connection.scalar(_owned(select(func.count()).select_from(CallRecord), user_id))
        by_status = dict(
            connection.execute(
                _owned(
                    select(InputRecord.status, func.count())
                    .join(CallRecord, CallRecord.id == InputRecord.call_id)
                    .group_by(InputRecord.status),
                    user_id,
                )
            ).all()
        )
        queued_by_user = dict(
            connection.execute(
                _owned(
                    select(CallRecord.user_id, func.count())
                    .join(InputRecord, InputRecord.call_id == CallRecord.id)
                    .where(InputRecord.status.in_(_WAITING))
                    .group_by(CallRecord.user_id),
                    user_id,
                )
            ).all()
        )
        users_query = select(UserRecord.id, UserRecord.name, UserRecord.quota, UserRecord.weight).where(
            UserRecord.revoked_at.is_(None)
        )
        if user_id is not None:
            users_query = users_query.where(UserRecord.id == user_id)
        users = connection.execute(users_query.order_by(UserRecord.name)).all()
        recent = connection.execute(
            _owned(
                select(InputRecord.created_at, InputRecord.started_at, InputRecord.duration)
                .join(CallRecord, CallRecord.id == InputRecord.call_id)
                .where(InputRecord.finished_at.is_not(None))
                .order_by(InputRecord.finished_at.desc())
                .limit(RECENT_SAMPLE),
                user_id,
            )
        ).all()
        failures = connection.execute(
            _owned(
                select(
                    InputRecord.call_id,
                    InputRecord.idx,
                    InputRecord.status,
                    InputRecord.error,
                    InputRecord.finished_at,
                    InputRecord.worker,
                    CallRecord.function_id,
                    FunctionRecord.tag,
                    UserRecord.name,
                )
                .join(CallRecord, CallRecord.id == InputRecord.call_id)
                .join(FunctionRecord, FunctionRecord.id == CallRecord.function_id)
                .join(UserRecord, UserRecord.id == CallRecord.user_id)
                .where(InputRecord.status.in_(_FAILED))
                .order_by(InputRecord.finished_at.desc())
                .limit(RECENT_FAILURES),
                user_id,
            )
        ).all()
        workers = live_workers(redis)
        detail = _functions_detail(connection, redis, user_id, workers)
    running = {int(k): max(0, int(v)) for k, v in redis.hgetall(protocol.running_key()).items()}
    running_total = sum(running.values())  # everyone's, so that a user's share means the same for all
    dispatcher_beat = redis.get(protocol.dispatcher_heartbeat_key())
    # Admin view: the share each user with work is due by weight, next to the share they have.
    busy = [u for u in users if running.get(u.id, 0) or queued_by_user.get(u.id, 0)]
    busy_weight = sum(u.weight for u in busy) if user_id is None else 0
    calls = {status.value: 0 for status in CallStatus}
    calls.update({str(status): count for status, count in by_status.items()})
    return {
        "scope": "all" if user_id is None else "user",
        "at": round(now, 3),
        "uptime": round(now - started_at, 3),
        "functions": functions,
        "function_calls": function_calls,
        "calls": calls,
        "users": [
            {
                "id": user.id,
                "name": user.name,
                "running": running.get(user.id, 0),
                "queued": queued_by_user.get(user.id, 0),
                "quota": user.quota,
                "weight": user.weight,
                "share": round(running.get(user.id, 0) / running_total, 4) if running_total else 0.0,
                "fair_share": round(user.weight / busy_weight, 4) if busy_weight and user in busy else None,
            }
            for user in users
        ],
        "workers": workers_summary(workers, now, heartbeat_seconds),
        "dispatcher": {
            "heartbeat_age": round(now - float(dispatcher_beat), 3) if dispatcher_beat else None,
            "alive": dispatcher_beat is not None and now - float(dispatcher_beat) <= DISPATCHER_STALE_SECONDS,
        },
        "queues": queue_depths(redis, queue_names(workers)),
        "duration": summary([r.duration for r in recent if r.duration is not None]),
        "queued_wait": summary(
            [max(0.0, (r.started_at - r.created_at).total_seconds()) for r in recent if r.started_at and r.created_at]
        ),
        "function_list": detail,
        "recent_failures": [
            {
                "call_id": f.call_id,
                "idx": f.idx,
                "status": f.status,
                "function_id": f.function_id,
                "function": f.tag,
                "user": f.name,
                "error": f.error,
                "worker": f.worker,
                "finished_at": _iso(f.finished_at),
            }
            for f in failures
        ],
    }


def _probe(check: Any) -> dict[str, Any]:
    try:
        details = check()
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure, it never raises
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, **(details if isinstance(details, dict) else {})}


def readiness(db: Database, redis: Redis, *, heartbeat_seconds: float) -> dict[str, dict[str, Any]]:
    """Each check of ``GET /ready``: ``ok`` True, False, or None when it could not be checked."""

    def database() -> None:
        with db.read_core() as connection:
            connection.execute(text("SELECT 1"))

    checks = {"database": _probe(database), "redis": _probe(redis.ping)}
    if not checks["redis"]["ok"]:
        unknown = {"ok": None, "error": "unknown: Redis is not answering"}
        return {**checks, "dispatcher": dict(unknown), "workers": dict(unknown)}
    now = time.time()

    def dispatcher() -> dict[str, Any]:
        beat = redis.get(protocol.dispatcher_heartbeat_key())
        if beat is None:
            raise RuntimeError("no dispatcher heartbeat: is `python -m mm_app dispatcher` running?")
        age = now - float(beat)
        if age > DISPATCHER_STALE_SECONDS:
            raise RuntimeError(f"the dispatcher's last heartbeat is {age:.1f} s old")
        return {"heartbeat_age": round(age, 3)}

    def workers() -> dict[str, Any]:
        alive = live_workers(redis)
        healthy = [w for w in alive if worker_health(w, now, heartbeat_seconds)[1] and not w.get("draining")]
        if not healthy:
            raise RuntimeError(
                f"no worker is alive and taking work ({len(alive)} stale or draining): "
                "is `python -m mm_app worker` running?"
            )
        return {"alive": len(healthy)}

    return {**checks, "dispatcher": _probe(dispatcher), "workers": _probe(workers)}


def latency_histograms(db: Database) -> dict[str, tuple[list[int], float, int]]:
    """Cumulative buckets, sum and count of every finished input's run time and queued wait, all users.

    One aggregate query per scrape: the database holds every observation, so the counts only grow and
    the API keeps no state (any API process answers the same). The queued wait needs date arithmetic,
    done for SQLite and PostgreSQL; on other databases that histogram is left out.
    """
    phases: dict[str, Any] = {"run": InputRecord.duration, "container_start": InputRecord.startup}
    dialect = db.engine.dialect.name
    if dialect == "sqlite":
        phases["queued"] = (func.julianday(InputRecord.started_at) - func.julianday(InputRecord.created_at)) * 86400.0
    elif dialect == "postgresql":
        phases["queued"] = func.extract("epoch", InputRecord.started_at - InputRecord.created_at)
    result = {}
    with db.read_core() as connection:
        for phase, value in phases.items():
            columns = [func.sum(case((value <= bound, 1), else_=0)) for bound in LATENCY_BUCKETS]
            row = connection.execute(
                select(func.count(value), func.coalesce(func.sum(value), 0.0), *columns).where(
                    InputRecord.finished_at.is_not(None), value.is_not(None)
                )
            ).one()
            result[phase] = ([int(c or 0) for c in row[2:]] + [int(row[0])], float(row[1]), int(row[0]))
    return result
