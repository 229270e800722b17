"""The dispatcher's own task sender (mm_app/broker.py) against Celery's ``send_task``, on a real Redis."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from redis import Redis

from mm_app import keyspace, registry
from mm_app.broker import TaskSender
from mm_app.keyspace import PendingEntry, WorkerCapacity
from mm_app.pending import PendingQueues
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
    """A pushed message's fields, headers and properties flattened, the per-message ids left out and the
    body decoded (Celery's is base64, ours plain JSON)."""
    message = json.loads(raw)
    properties = message["properties"]
    body = message["body"]
    if properties.pop("body_encoding", None) == "base64":
        body = base64.b64decode(body).decode()
    flat = {k: v for k, v in message.items() if k not in ("headers", "properties", "body")}
    flat["body"] = json.loads(body)
    for part, fields in (("headers", message["headers"]), ("properties", properties)):
        flat.update({f"{part}.{k}": v for k, v in fields.items() if k not in PER_SEND})
    return flat


def _celerys(r: Redis, args: list[Any], queue: str) -> bytes:
    celery = Celery("minimodal-test", set_as_current=False)
    celery.config_from_object("celeryconfig")
    celery.conf.broker_url = f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/{BROKER_DB}"
    try:
        celery.send_task(keyspace.TASK_EXECUTE, args=args, queue=queue, task_id=str(uuid.uuid4()))
    finally:
        celery.close()
    [raw] = r.lrange(queue, 0, -1)
    return raw


def _as_pushed_to(expected: dict[str, Any], queue: str) -> dict[str, Any]:
    """Celery's message as it would be on ``queue``, its argsrepr as the JSON text of its arguments."""
    expected = {**expected, "properties.delivery_info": {"exchange": "", "routing_key": queue}}
    expected["headers.argsrepr"] = json.dumps(expected["body"][0], separators=(",", ":"))
    return expected


def test_the_sender_pushes_the_message_celerys_send_task_pushes_for_the_same_task(r: Redis) -> None:
    # Given Celery's own message for a task, on the same Redis
    args = ["fc-0123456789abcdef", "fu-0123456789abcdef", 7, 0, 3]
    theirs = _celerys(r, args, "mm.w.celery")
    # When the sender the dispatcher uses sends the same task
    task_id = str(uuid.uuid4())
    TaskSender(r).send_task(keyspace.TASK_EXECUTE, args=args, queue="mm.w.sender", task_id=task_id)
    [ours] = r.lrange("mm.w.sender", 0, -1)
    # Then it is the same message in every field but its own ids, its queue and the body's encoding
    assert _fields(ours) == _as_pushed_to(_fields(theirs), "mm.w.sender")
    # And those ids are this task's, the delivery tag a fresh one
    headers, properties = json.loads(ours)["headers"], json.loads(ours)["properties"]
    assert headers["id"] == headers["root_id"] == properties["correlation_id"] == task_id
    assert properties["delivery_tag"] not in (task_id, json.loads(theirs)["properties"]["delivery_tag"])


def test_the_enqueue_step_pushes_the_same_message_when_it_takes_a_lone_users_call(r: Redis) -> None:
    # Given a live worker, a function's needs, a leading dispatcher and a user with nothing else queued
    pending = PendingQueues(r)
    worker = WorkerCapacity("w1", keyspace.worker_queue("w1"), 2, 2000, 4096, {}, False, None)
    registry.beat(r, worker, {"worker_id": "w1"}, 60)
    pending.set_needs("fu-0123456789abcdef", registry.needs_of({}, keyspace.QUEUE_CPU))
    r.set(keyspace.dispatch_leader_key(), "someone", px=60_000)
    # When the API's enqueue step queues a call of it with a task template
    task_id = str(uuid.uuid4())
    entry = PendingEntry("fc-0123456789abcdef", "fu-0123456789abcdef", 0, 1)
    template = TaskSender(r).template(keyspace.TASK_EXECUTE, task_id)
    sent = pending.enqueue(7, entry, inputs={"0": b"N."}, ttl=60, direct=template)
    # Then it took the call and pushed Celery's message for it on the worker's queue, under the task's id
    assert sent is not None and sent.queue == worker.queue and r.hexists(keyspace.inflight_key(), task_id)
    [ours] = r.lrange(worker.queue, 0, -1)
    theirs = _celerys(r, ["fc-0123456789abcdef", "fu-0123456789abcdef", 7, 0, 1], "mm.w.celery")
    assert _fields(ours) == _as_pushed_to(_fields(theirs), worker.queue)
    assert json.loads(ours)["headers"]["id"] == task_id
