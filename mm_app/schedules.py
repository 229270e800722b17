"""Schedules of deployed functions (and of running ephemeral apps): the database says what should run,
RedBeat holds when.

The source of truth is the ``function_specs`` table: every function of a ``deployed`` or running
``ephemeral`` app whose spec has a ``schedule`` (an ephemeral app's stop ends them, as a deployed one's).
:func:`reconcile` makes RedBeat's entries (under ``mm:redbeat``) match it: it adds
what is missing (a new deploy, or everything after a Redis flush), removes what is no longer
deployed (a redeploy replaced it, or ``app stop``), and leaves alone entries that match, so their
last run time survives. Beat (mm_app/beat.py) runs it on start, when the API marks the schedules
dirty after a deploy or a stop, and every :data:`RECONCILE_SECONDS` as a safety net.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from redis import Redis
from sqlalchemy import select

from mm_app import keyspace

from .database import Database
from .models import AppRecord, FunctionRecord, FunctionSpecRecord

logger = logging.getLogger("minimodal.schedules")

RECONCILE_SECONDS = 10.0  # beat rebuilds its entries from the database at least this often
ENTRY_PREFIX = "fn:"  # RedBeat entry name: fn:{function id}


def mark_dirty(redis: Redis) -> None:
    """Tell beat to reconcile on its next tick (the API calls this after a deploy or a stop)."""
    redis.set(keyspace.schedules_dirty_key(), "1")


def reconcile_user(services: Any, user_id: int) -> None:
    """After a user's deploy or stop: beat picks up the change within a tick, without restarting."""
    mark_dirty(services.redis)


def desired(db: Database) -> dict[str, dict[str, Any]]:
    """Entry name -> ``{"function_id", "user_id", "schedule"}`` for every scheduled deployed function."""
    with db.read() as session:
        rows = session.execute(
            select(FunctionRecord.id, FunctionRecord.user_id, FunctionSpecRecord.spec)
            .join(FunctionSpecRecord, FunctionSpecRecord.function_id == FunctionRecord.id)
            .join(AppRecord, AppRecord.id == FunctionRecord.app_id)
            .where(AppRecord.state.in_(("deployed", "ephemeral")))  # a running ephemeral app's too
        ).all()
    return {
        ENTRY_PREFIX + function_id: {"function_id": function_id, "user_id": user_id, "schedule": spec["schedule"]}
        for function_id, user_id, spec in rows
        if isinstance(spec, dict) and spec.get("schedule")
    }


def celery_schedule(spec: dict[str, Any]) -> Any:
    """A Celery schedule for a Period or Cron spec (the Cron's time zone is applied by beat's entry)."""
    from celery.schedules import crontab, schedule

    if "period" in spec:
        return schedule(run_every=timedelta(seconds=float(spec["period"])))
    minute, hour, day_of_month, month_of_year, day_of_week = spec["cron"].split()
    return crontab(
        minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week
    )


def reconcile(celery_app: Any, db: Database) -> dict[str, int]:
    """Make RedBeat's entries match the database; return how many were added, kept and removed."""
    from redbeat.schedulers import RedBeatSchedulerEntry, get_redis

    want = desired(db)
    redis = get_redis(celery_app)
    conf = celery_app.redbeat_conf
    have: dict[str, dict[str, Any]] = {}
    for key in redis.zrange(conf.schedule_key, 0, -1):
        key = key.decode() if isinstance(key, bytes) else key
        raw = redis.hget(key, "definition")
        if raw is None:
            continue
        definition = json.loads(raw)
        if definition.get("task") == keyspace.TASK_SCHEDULED_RUN:
            have[definition["name"]] = definition
    added = removed = kept = 0
    for name in have.keys() - want.keys():
        RedBeatSchedulerEntry(name=name, task=keyspace.TASK_SCHEDULED_RUN, app=celery_app).delete()
        removed += 1
    for name, item in want.items():
        kwargs = {"schedule": item["schedule"]}
        if name in have and have[name].get("kwargs") == kwargs:
            kept += 1
            continue
        RedBeatSchedulerEntry(
            name=name,
            task=keyspace.TASK_SCHEDULED_RUN,
            schedule=celery_schedule(item["schedule"]),
            args=[item["function_id"], item["user_id"]],
            kwargs=kwargs,
            app=celery_app,
        ).save()
        added += 1
    if added or removed:
        logger.info("schedules reconciled: %d added, %d removed, %d kept", added, removed, kept)
    return {"added": added, "removed": removed, "kept": kept}
