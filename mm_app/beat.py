"""Celery beat's scheduler for MiniModal: RedBeat (entries in Redis, one leader by lock) plus three things.

- A due entry of a deployed function is submitted by beat itself as an ordinary call (the same
  records as ``POST /v1/functions/{id}/calls``): retries, dead letters and logs apply, and the call
  shows in ``minimodal app history``. Its call id is derived from the entry and its due time, so two
  beats that ever fired the same slot (RedBeat's lock already prevents it) would start one call.
- Entries are reconciled with the database (mm_app/schedules.py) at start, when the API marks them
  dirty, and every few seconds: a Redis flush loses nothing for long, and deploys need no restart.
- A lock lost with Redis (restart, flush) is taken again if free, instead of crashing beat.

Run by ``python -m mm_app beat`` (``celery beat -S mm_app.beat:Scheduler``).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
import zoneinfo
from datetime import datetime
from functools import partial
from typing import Any

from celery.schedules import crontab
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, get_redis
from redis.exceptions import LockError

from minimodal import config, protocol
from minimodal.exception import InvalidError, NotFoundError

from .database import Database
from .pending import PendingQueues
from .schedules import RECONCILE_SECONDS, reconcile
from .submit import submit_call

logger = logging.getLogger("minimodal.beat")

NO_ARGUMENTS = pickle.dumps(((), {}), protocol=4)  # a scheduled run is called with no arguments


def _now_in(zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime.now(zone)


class ZonedEntry(RedBeatSchedulerEntry):
    """A RedBeat entry whose cron expression is read in the time zone its Cron names."""

    @classmethod
    def from_key(cls, key: str, app: Any = None) -> ZonedEntry:
        entry = super().from_key(key, app=app)
        zone_name = (entry.kwargs or {}).get("schedule", {}).get("timezone")
        if zone_name and isinstance(entry.schedule, crontab):
            zone = zoneinfo.ZoneInfo(zone_name)
            s = entry.schedule
            entry.schedule = crontab(
                minute=s._orig_minute,
                hour=s._orig_hour,
                day_of_week=s._orig_day_of_week,
                day_of_month=s._orig_day_of_month,
                month_of_year=s._orig_month_of_year,
                nowfun=partial(_now_in, zone),
                app=entry.app,
            )
            if entry.last_run_at is not None:
                entry.last_run_at = entry.last_run_at.astimezone(zone)
        return entry


def run_call_id(entry_name: str, due: float) -> str:
    """The call id of one run: the same entry and due second give the same id."""
    return "fc-" + hashlib.sha256(f"{entry_name}|{int(due)}".encode()).hexdigest()[:16]


class Scheduler(RedBeatScheduler):
    Entry = ZonedEntry

    def setup_schedule(self) -> None:
        super().setup_schedule()
        self._db = Database(config.database_url())
        self._db.create_all()
        self._pending = PendingQueues(get_redis(self.app))
        self._next_reconcile = 0.0

    def _maybe_reconcile(self) -> None:
        redis = get_redis(self.app)
        pipe = redis.pipeline()
        pipe.get(protocol.schedules_dirty_key())
        pipe.delete(protocol.schedules_dirty_key())
        dirty, _ = pipe.execute()
        if not dirty and time.monotonic() < self._next_reconcile:
            return
        try:
            reconcile(self.app, self._db)
        except Exception:
            logger.exception("cannot reconcile schedules with the database; trying again next tick")
            return
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self.lock_key and self.lock is not None and not self.lock.owned():
            # Redis lost our lock (a restart or a flush): lead again only if no other beat took it.
            if not self.lock.acquire(blocking=False):
                return self.max_interval
            logger.info("beat: took the lock again after Redis lost it")
        self._maybe_reconcile()
        try:
            return super().tick(*args, **kwargs)
        except LockError:
            logger.warning("beat: lost the lock while extending it; not leading this tick")
            return self.max_interval

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task != protocol.TASK_SCHEDULED_RUN:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        due = entry.due_at.timestamp() if entry.due_at is not None else time.time()
        entry = self.reserve(entry) if advance else entry
        function_id, user_id = entry.args
        call_id = run_call_id(entry.name, due)
        try:
            started = submit_call(
                self._db,
                self._pending,
                user_id=user_id,
                function_id=function_id,
                payloads=[NO_ARGUMENTS],
                ttl=config.get("result_ttl"),
                call_id=call_id,
            ).new
        except (NotFoundError, InvalidError) as exc:  # its app stopped since the last reconcile, say
            logger.warning("scheduled run of %s not started: %s", function_id, exc)
            return None
        logger.info("scheduled run of %s: %s%s", function_id, call_id, "" if started else " (already started)")
        return None
