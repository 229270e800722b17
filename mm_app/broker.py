"""Sending a taken task to its worker's Celery queue: the message Celery would send, in one ``LPUSH``.

The dispatcher and the API's shortcut send one task per take, so on every call's path. Celery's
``send_task`` spends about 360 us of Python per task here (producer, queue declaration, routing,
serializer, hooks) before the one ``LPUSH`` of kombu's Redis transport it ends in, which takes about
90 us. :class:`TaskSender` writes that same message itself: Celery's task protocol 2 (headers,
properties and a base64 JSON body of ``[args, kwargs, embed]``), as kombu's Redis transport stores it
in the list named after the queue (priority 0, the default exchange). The worker cannot tell the
difference, and ``tests/test_broker.py`` compares the two messages field by field, so an upgrade of
Celery or kombu that changes the format fails there rather than at the workers.

Everything else (image builds, retries with a countdown) is sent with Celery's own ``send_task``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

from redis import Redis

from .observability import log_sent

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class TaskSender:
    """Celery's sending interface as the dispatcher uses it (``send_task``, ``producer_or_acquire``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self._reply_to = str(uuid.uuid4())  # Celery's per-app oid; nothing replies (no result backend)

    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[None]:
        """Celery's context for sending many tasks on one connection: the Redis client is that already."""
        yield None

    def message(self, name: str, args: list[Any], queue: str, task_id: str) -> str:
        """The JSON text kombu's Redis transport would push for ``send_task(name, args, queue=queue)``."""
        body = json.dumps([args, {}, _EMBED]).encode()
        headers: dict[str, Any] = {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": self._origin,
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        properties = {
            "correlation_id": task_id,
            "reply_to": self._reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        return json.dumps(
            {
                "body": base64.b64encode(body).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": properties,
            }
        )

    def send_task(self, name: str, args: list[Any], queue: str, task_id: str, producer: Any = None) -> None:
        """Push the task on ``queue``; a Redis error propagates (the caller puts the work back)."""
        self.redis.lpush(queue, self.message(name, args, queue, task_id))
        log_sent(name, args, queue, task_id)  # the line Celery's after_task_publish hook writes for its sends
