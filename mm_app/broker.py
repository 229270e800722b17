"""Sending a taken task to its worker's Celery queue: the message Celery would send, in one ``LPUSH``.

The dispatcher and the API's shortcut send one task per take, so on every call's path. Celery's
``send_task`` spends about 360 us of Python per task here (producer, queue declaration, routing,
serializer, hooks) before the one ``LPUSH`` of kombu's Redis transport it ends in, which takes about
90 us. :class:`TaskSender` writes that same message itself: Celery's task protocol 2 (headers,
properties and a JSON body of ``[args, kwargs, embed]``), as kombu's Redis transport stores it
in the list named after the queue (priority 0, the default exchange), but with the body as plain
JSON text: kombu decodes a body only when the properties name a ``body_encoding`` (Celery's is
base64), and Redis's Lua, which builds the same message in the API's enqueue step, has no base64.
``tests/test_broker.py`` compares both with Celery's field by field, so an upgrade of Celery or kombu
that changes the format fails there rather than at the workers.

Everything else (image builds, retries with a countdown) is sent with Celery's own ``send_task``.
"""

from __future__ import annotations

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

    def template(self, name: str, task_id: str) -> dict[str, Any]:
        """The message of task ``task_id`` without its arguments and queue: the body, ``argsrepr`` and
        ``routing_key`` are filled in by :meth:`message`, or by the enqueue step (``enqueue.lua``)."""
        return {
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
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
                "argsrepr": "",
                "kwargsrepr": "{}",
                "origin": self._origin,
                "ignore_result": False,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": self._reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": ""},
                "priority": 0,
                "delivery_tag": str(uuid.uuid4()),
            },
        }

    def message(self, name: str, args: list[Any], queue: str, task_id: str) -> str:
        """The JSON text kombu's Redis transport would push for ``send_task(name, args, queue=queue)``."""
        message = self.template(name, task_id)
        message["body"] = json.dumps([args, {}, _EMBED])
        message["headers"]["argsrepr"] = json.dumps(args, separators=(",", ":"))  # as enqueue.lua writes it
        message["properties"]["delivery_info"]["routing_key"] = queue
        return json.dumps(message)

    def send_task(self, name: str, args: list[Any], queue: str, task_id: str, producer: Any = None) -> None:
        """Push the task on ``queue``; a Redis error propagates (the caller puts the work back)."""
        self.redis.lpush(queue, self.message(name, args, queue, task_id))
        log_sent(name, args, queue, task_id)  # the line Celery's after_task_publish hook writes for its sends
