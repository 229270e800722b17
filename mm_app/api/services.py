"""What request handlers use: settings, the database, Redis, pending queues and payload store."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from flask import current_app
from redis import Redis

from minimodal import config as mm_config
from minimodal.exception import InvalidError

from ..accounts import TokenCache
from ..broker import TaskSender
from ..database import Database
from ..payloads import Payloads
from ..pending import PendingQueues, Policy
from ..ratelimit import RateLimiter

_API_SETTINGS = (
    "redis_url",
    "inline_payload_size",
    "max_payload_size",
    "result_ttl",
    "default_quota",
    "default_weight",
    "call_rate_limit",
    "call_rate_burst",
    "direct_dispatch",
)


@dataclass
class Services:
    settings: dict[str, Any]
    db: Database
    redis: Redis
    pending: PendingQueues
    payloads: Payloads
    started_at: float
    celery: Any  # used only to send tasks by name (image builds)
    sender: TaskSender  # sends the tasks the API's shortcut takes (mm_app/broker.py)
    rate_limiter: RateLimiter  # call submissions per token
    tokens: TokenCache[Any]  # auth.User by token digest, while unchanged

    @classmethod
    def build(cls, overrides: dict[str, Any], *, redis: Redis | None, database: Database | None) -> Services:
        settings = {name: overrides.get(name, mm_config.get(name)) for name in _API_SETTINGS}
        settings["database_url"] = overrides.get("database_url") or mm_config.database_url()
        if redis is None:
            if not settings["redis_url"]:
                raise InvalidError("no Redis configured: set MINIMODAL_REDIS_URL or run `minimodal up`")
            redis = Redis.from_url(settings["redis_url"], health_check_interval=30)
        if database is None:
            database = Database(settings["database_url"])
            database.create_all()
        return cls(
            settings=settings,
            db=database,
            redis=redis,
            # The scheduler's policy, as the dispatcher's: the enqueue step takes with it (the API's shortcut)
            pending=PendingQueues(
                redis, dataclasses.replace(Policy.from_config(), default_quota=settings["default_quota"])
            ),
            payloads=Payloads(redis, ttl=settings["result_ttl"]),
            started_at=time.time(),
            celery=_sender(settings["redis_url"]),
            sender=TaskSender(redis),
            rate_limiter=RateLimiter(redis, settings["call_rate_limit"], settings["call_rate_burst"]),
            tokens=TokenCache(),
        )


def _sender(redis_url: str | None) -> Any:
    from celery import Celery

    sender = Celery("minimodal-api")
    sender.config_from_object("celeryconfig")
    if redis_url:
        sender.conf.broker_url = redis_url
    return sender


def services() -> Services:
    return current_app.extensions["minimodal"]
