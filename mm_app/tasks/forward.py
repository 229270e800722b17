"""A function calling the platform's API from its container: the worker forwards the request.

The code in a container has no network route to the API (``block_network=True``, gVisor, another
host) and holds no credential. Its SDK sends each API request through the runner's stdio (a ``Q`` frame
``{"kind": "http", ...}``); the worker sends it to the API with a token scoped to the call's user, which
this worker minted in Redis (``scoped_token_key``), refreshes while used, and deletes when it shuts down:
never the user's own token, never another user's. The request names its parent call, so the API records
the call graph; and while it waits on other calls (a result, a stream of events, a submit that waits),
the parent's quota slot is lent to its children (``lent_key``: leases that expire on their own), so
nesting never deadlocks on a quota.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from typing import Any

from redis import Redis

from minimodal import config, protocol
from minimodal._client import Client
from minimodal.exception import InvalidError
from mm_app import keyspace

SCOPED_TOKEN_TTL = 15 * 60  # seconds; refreshed on every use, deleted at worker shutdown
PARENT_HEADER = "X-MiniModal-Parent-Call"
_WAITING_PATHS = ("/outputs", "/stream")


class Forwarder:
    """One worker's forwarding of API requests from its containers."""

    def __init__(self, redis: Redis, worker_id: str) -> None:
        self.redis, self.worker_id = redis, worker_id
        self.server_url = config.get("server_url")
        self._tokens: dict[int, str] = {}
        self._lock = threading.Lock()

    def token(self, user_id: int) -> str:
        with self._lock:
            token = self._tokens.get(user_id)
            if token is None:
                token = self._tokens[user_id] = "mms-" + secrets.token_urlsafe(32)
        key = keyspace.scoped_token_key(keyspace.token_digest(token))
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, f"{user_id}|{self.worker_id}", ex=SCOPED_TOKEN_TTL)
            pipe.execute()
        return token

    def forward(self, user_id: int, parent_call_id: str, request: dict[str, Any]) -> dict[str, Any]:
        method, path = str(request.get("method", "GET")).upper(), request.get("path")
        if not isinstance(path, str) or not path.startswith("/v1/") or method not in ("GET", "POST", "PUT", "HEAD"):
            raise InvalidError(f"a function may call the API's /v1/ routes only, not {method} {path!r}")
        client = Client(self.server_url, self.token(user_id), headers={PARENT_HEADER: parent_call_id})
        data = protocol.unb64(request["data"]) if request.get("data") is not None else None
        waits = path.endswith(_WAITING_PATHS) or (
            method == "POST" and float((request.get("json") or {}).get("wait", 0) or 0) > 0
        )
        lease = self._lend(user_id, float(request.get("timeout") or 60) + 30) if waits else None
        try:
            response = client.request(
                method,
                path,
                json=request.get("json"),
                data=data,
                params=request.get("params"),
                timeout=float(request.get("timeout") or 60),
                raw=bool(request.get("raw")),
            )
        finally:
            if lease is not None:
                self.redis.zrem(keyspace.lent_key(user_id), lease)
        if request.get("raw"):
            return {"raw": protocol.b64(response.content)}
        return {"json": response}

    def _lend(self, user_id: int, seconds: float) -> str:
        """A waiting parent does not hold its quota slot: its children may take it meanwhile. The lease
        expires on its own if this worker dies mid-wait."""
        lease = uuid.uuid4().hex
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keyspace.lent_key(user_id), {lease: time.time() + seconds})
            pipe.zremrangebyscore(keyspace.lent_key(user_id), "-inf", time.time())
            pipe.expire(keyspace.lent_key(user_id), int(seconds) + 60)
            pipe.rpush(keyspace.wake_key(), "1")
            pipe.execute()
        return lease

    def close(self) -> None:
        with self._lock:
            tokens, self._tokens = list(self._tokens.values()), {}
        if tokens:
            self.redis.delete(*(keyspace.scoped_token_key(keyspace.token_digest(t)) for t in tokens))
