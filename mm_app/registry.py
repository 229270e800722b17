"""Live workers, as their heartbeats in Redis describe them (``mm:worker:*``, expiring keys)."""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from minimodal import protocol


def live_workers(redis: Redis) -> list[dict[str, Any]]:
    workers = []
    for key in redis.scan_iter(protocol.worker_key("*"), count=1000):
        raw = redis.get(key)
        if raw:
            workers.append(json.loads(raw))
    return workers


def docker_workers(redis: Redis) -> list[dict[str, Any]]:
    return [w for w in live_workers(redis) if "docker" in w.get("runtimes", [])]
