"""The dispatcher's own task sender (mm_app/broker.py) against Celery's ``send_task``, on a real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from redis import Redis

from mm_app import keyspace
from mm_app.broker import TaskSender
from tests.conftest import RedisServer

BROKER_DB = 15  # this module's Redis database: nobody else's
PER_SEND = {"id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"}  # ids of one message


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis(port=redis_server.port, db=BROKER_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _fields(raw: bytes) -> dict[str, Any]:
    """A pushed message's fields, headers and properties flattened, the per-message ids left out."""
    message = json.loads(raw)
    flat = {k: v for k, v in message.items() if k not in ("headers", "properties")}
    for part in ("headers", "properties"):
        flat.update({f"{part}.{k}": v for k, v in message[part].items() if k not in PER_SEND})
    return flat


def test_the_sender_pushes_the_message_celerys_send_task_pushes_for_the_same_task(r: Redis) -> None:
    # Given Celery's own app on the same Redis, and the sender the dispatcher and the API use
    celery = Celery("minimodal-test", set_as_current=False)
    celery.config_from_object("celeryconfig")
    celery.conf.broker_url = f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/{BROKER_DB}"
    args = ["fc-0123456789abcdef", "fu-0123456789abcdef", 7, 0, 3]
    try:
        # When each sends the same task to two queues
        celery.send_task(keyspace.TASK_EXECUTE, args=args, queue="mm.w.celery", task_id=str(uuid.uuid4()))
        task_id = str(uuid.uuid4())
        TaskSender(r).send_task(keyspace.TASK_EXECUTE, args=args, queue="mm.w.sender", task_id=task_id)
    finally:
        celery.close()
    theirs, ours = r.lrange("mm.w.celery", 0, -1), r.lrange("mm.w.sender", 0, -1)
    # Then each queue holds one message, the same in every field but the message's own ids and its queue
    assert len(theirs) == len(ours) == 1
    expected = _fields(theirs[0])
    expected["properties.delivery_info"] = {"exchange": "", "routing_key": "mm.w.sender"}
    assert _fields(ours[0]) == expected
    # And those ids are this task's, the delivery tag a fresh one
    headers, properties = json.loads(ours[0])["headers"], json.loads(ours[0])["properties"]
    assert headers["id"] == headers["root_id"] == properties["correlation_id"] == task_id
    assert properties["delivery_tag"] not in (task_id, json.loads(theirs[0])["properties"]["delivery_tag"])
