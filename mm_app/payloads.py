"""Inputs, outputs and blobs in Redis: opaque bytes to the control plane, keyed by call id.

Inputs of a call sit in one hash (index -> pickled args or a blob reference), written by
:meth:`~mm_app.pending.PendingQueues.enqueue` in the same round trip that queues them. Outputs go to one
stream per call in completion order, so any number of waiters can read them and resume from a
cursor. Payloads over the inline size travel as blobs, written and read in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from redis import Redis

from minimodal import protocol
from minimodal.defaults import DEFAULT_LOG_STREAM_LENGTH, DEFAULT_STREAM_TTL
from minimodal.exception import InvalidError, NotFoundError, PayloadTooLargeError
from mm_app import keyspace

from . import lua

CHUNK = 1024 * 1024


class Payloads:
    def __init__(self, redis: Redis, *, ttl: int, stream_ttl: int = DEFAULT_STREAM_TTL) -> None:
        self.redis = redis
        self.ttl = ttl
        self.stream_ttl = stream_ttl
        self._publish = lua.Script(redis, "publish")

    # ---- inputs ----

    def get_inputs(self, call_id: str, indexes: range) -> list[bytes | None]:
        return self._resolve(self.redis.hmget(keyspace.inputs_key(call_id), [str(i) for i in indexes]))

    def get_inputs_unless_cancelled(self, call_id: str, indexes: range) -> list[bytes | None] | None:
        """:meth:`get_inputs`, or None when the call was cancelled (mm_app/cancel.py): one round trip for both."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keyspace.cancelled_key(call_id))
            pipe.hmget(keyspace.inputs_key(call_id), [str(i) for i in indexes])
            cancelled, values = pipe.execute()
        return None if cancelled else self._resolve(values)

    def _resolve(self, values: list[bytes | None]) -> list[bytes | None]:
        resolved: list[bytes | None] = []
        for value in values:
            blob_id = protocol.parse_blob_ref(value) if value is not None else None
            resolved.append(self.get_blob(blob_id) if blob_id else value)
        return resolved

    # ---- outputs ----

    def put_output(self, call_id: str, envelope: dict[str, Any]) -> str | None:
        """Publish an input's output once: a duplicate run's output is dropped. Returns the entry id."""
        return self.put_outputs(call_id, [envelope])[0]

    def put_outputs(self, call_id: str, envelopes: list[dict[str, Any]]) -> list[str | None]:
        """Publish several outputs of one call in one round trip, in order, each once (see :meth:`put_output`)."""
        outputs: list[dict[str, int]] = []
        data: list[Any] = []
        for envelope in envelopes:
            fields = [
                part
                for k, v in envelope.items()
                if v is not None
                for part in (k, v if isinstance(v, bytes) else str(v))
            ]
            outputs.append({"index": int(envelope[protocol.OUT_INDEX]), "size": len(fields)})
            data += fields
        ids = self._publish(
            {"outputs": keyspace.outputs_key(call_id), "done": keyspace.done_key(call_id)},
            {"ttl": self.ttl, "outputs": outputs},
            data,
        )
        return [i.decode() if i else None for i in ids]

    def unpublish_output(self, call_id: str, idx: int, entry_id: str | None) -> None:
        """Take a published output back (a dead-lettered input is retried): its next output counts."""
        pipe = self.redis.pipeline(transaction=True)
        if entry_id:
            pipe.xdel(keyspace.outputs_key(call_id), entry_id)
        pipe.srem(keyspace.done_key(call_id), idx)
        pipe.execute()

    def read_outputs(self, call_id: str, cursor: str, block_ms: int, count: int = 1000) -> tuple[list[dict], str]:
        """Envelopes after ``cursor`` (waiting up to ``block_ms``), and the new cursor."""
        key = keyspace.outputs_key(call_id)
        if block_ms > 0:
            reply = self.redis.xread({key: cursor}, count=count, block=block_ms)
            entries = reply[0][1] if reply else []
        else:
            entries = self.redis.xrange(key, min=f"({cursor}" if cursor != "0-0" else "-", count=count)
        envelopes = []
        for entry_id, fields in entries:
            cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            envelopes.append({k.decode(): v for k, v in fields.items()})
        return envelopes, cursor

    def put_item(self, call_id: str, fields: dict[str, Any]) -> None:
        key = keyspace.items_key(call_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {k: (v if isinstance(v, bytes) else str(v)) for k, v in fields.items() if v is not None})
        pipe.expire(key, self.stream_ttl)
        pipe.execute()

    def put_logs(self, call_id: str, app_id: str, entries: list[dict[str, str]]) -> None:
        """Append log entries, in order, to the call's stream and the app's, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for key in (keyspace.logs_key(call_id), keyspace.app_logs_key(app_id)):
            for fields in entries:
                pipe.xadd(key, fields, maxlen=DEFAULT_LOG_STREAM_LENGTH, approximate=True)
            pipe.expire(key, self.ttl)
        pipe.execute()

    def read_streams(
        self, cursors: dict[str, str], block_ms: int, count: int = 1000
    ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """Entries after each key's cursor, waiting up to ``block_ms`` for the first: (key, id, fields)."""
        if block_ms > 0:
            reply = self.redis.xread(cursors, count=count, block=block_ms) or []
        else:
            reply = self.redis.xread(cursors, count=count) or []
        return [(key.decode(), entry_id.decode(), fields) for key, entries in reply for entry_id, fields in entries]

    def outputs_exist(self, call_id: str) -> bool:
        return bool(self.redis.exists(keyspace.outputs_key(call_id)))

    # ---- blobs ----

    def put_blob(self, user_id: int, stream: IO[bytes], limit: int) -> tuple[str, int]:
        """Copy a request body into a new blob chunk by chunk; refuse it past ``limit`` bytes."""
        blob_id = protocol.new_id("bl")
        key, size, head, tail = keyspace.blob_key(blob_id), 0, b"", b""
        try:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"the blob is over the maximum payload size of {limit:,} bytes")
                head = head or chunk[:3]
                tail = chunk[-1:]
                self.redis.append(key, chunk)
        except BaseException:
            self.redis.delete(key)
            raise
        if not protocol.looks_like_pickle(head + tail if len(head) >= 3 else head):
            self.redis.delete(key)
            raise InvalidError("the blob is not a pickle (expected a protocol 2-5 header and a STOP byte)")
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(key, self.ttl)
        pipe.set(keyspace.blob_owner_key(blob_id), user_id, ex=self.ttl)
        pipe.execute()
        return blob_id, size

    def blob_owner(self, blob_id: str) -> int | None:
        owner = self.redis.get(keyspace.blob_owner_key(blob_id))
        return int(owner) if owner is not None else None

    def put_blob_bytes(self, owner: int, data: bytes) -> str:
        blob_id = protocol.new_id("bl")
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keyspace.blob_key(blob_id), data, ex=self.ttl)
        pipe.set(keyspace.blob_owner_key(blob_id), owner, ex=self.ttl)
        pipe.execute()
        return blob_id

    def get_blob(self, blob_id: str) -> bytes:
        data = self.redis.get(keyspace.blob_key(blob_id))
        if data is None:
            raise NotFoundError(f"blob {blob_id} does not exist or has expired")
        return data

    def iter_blob(self, blob_id: str) -> Iterator[bytes]:
        key = keyspace.blob_key(blob_id)
        size = self.redis.strlen(key)
        for start in range(0, size, CHUNK):
            yield self.redis.getrange(key, start, min(size, start + CHUNK) - 1)
