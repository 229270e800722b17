"""Reading a call's live events (generator items, outputs, printed logs) on the client.

:class:`CallEvents` keeps one cursor per kind. It reads over a WebSocket that the server pushes to,
and reconnects from the last cursors when the connection drops (backoff from 1 ms, x10, up to 1 s,
ten tries); where no WebSocket can be opened it falls back to HTTP long-poll. Either way every event
arrives once and in order: anything at or before a cursor is dropped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._client import Client
from ._websocket import HandshakeError, WebSocket
from .exception import ServiceError, from_response

KINDS = ("items", "outputs", "logs")
_KIND_OF_EVENT = {"item": "items", "output": "outputs", "log": "logs"}
_COLOURS = ("36", "35", "33", "32", "34", "31")


def _after(a: str, b: str) -> bool:
    """True when stream id ``a`` comes after ``b``."""
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq)) > (int(bm), int(bseq))


class CallEvents:
    def __init__(
        self,
        client: Client,
        call_id: str,
        kinds: Sequence[str] = KINDS,
        *,
        websocket: bool = True,
        cursors: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.call_id = call_id
        self.cursors = {kind: (cursors or {}).get(kind, "0-0") for kind in kinds}
        self.websocket = websocket and client.websocket
        self._ws: WebSocket | None = None
        self.transport = "websocket" if self.websocket else "long-poll"

    def _query(self) -> str:
        return "&".join(f"{kind}={cursor}" for kind, cursor in self.cursors.items())

    def _connect(self) -> WebSocket | None:
        url = f"{self.client.server_url}/v1/calls/{self.call_id}/ws?{self._query()}"
        headers = {"Authorization": f"Bearer {self.client.token}"} if self.client.token else {}
        delay = 0.001
        for _ in range(10):
            try:
                return WebSocket.connect(url, headers, timeout=10)
            except HandshakeError as exc:
                if exc.status in (401, 403, 404):
                    try:
                        error = json.loads(exc.body)["error"]
                        raise from_response(exc.status, error.get("type"), error["message"]) from None
                    except (ValueError, KeyError):
                        raise from_response(exc.status, None, f"HTTP {exc.status}") from None
                if exc.status in (400, 405, 426):
                    break  # the server speaks no WebSocket here: long-poll instead
            except OSError:
                pass
            time.sleep(delay)
            delay = min(delay * 10, 1.0)
        self.websocket, self.transport = False, "long-poll"
        return None

    def next(self, timeout: float = 25) -> list[dict[str, Any]]:
        """The next events (possibly none when ``timeout`` passes), each new and in order."""
        events = self._ws_events(timeout) if self.websocket else self._poll(timeout)
        fresh = []
        for event in events:
            kind = _KIND_OF_EVENT[event["kind"]]
            if kind in self.cursors and _after(event["cursor"], self.cursors[kind]):
                self.cursors[kind] = event["cursor"]
                fresh.append(event)
        return fresh

    def _ws_events(self, timeout: float) -> list[dict[str, Any]]:
        if self._ws is None:
            self._ws = self._connect()
            if self._ws is None:
                return self._poll(timeout)
        try:
            message = self._ws.recv(timeout)
        except TimeoutError:
            return []
        except (OSError, ValueError):
            message = None
        if message is None:  # dropped: reconnect from the cursors on the next read
            self.drop()
            return []
        payload = json.loads(message)
        return payload.get("events", []) if payload.get("kind") == "batch" else []

    def _poll(self, timeout: float) -> list[dict[str, Any]]:
        try:
            reply = self.client.request(
                "GET",
                f"/v1/calls/{self.call_id}/stream",
                params={**self.cursors, "timeout": f"{min(timeout, 25):.3f}"},
                timeout=timeout + 30,
            )
        except ServiceError:
            time.sleep(0.5)  # the API may be restarting; the cursors make the retry lossless
            return []
        return reply["events"]

    def drop(self) -> None:
        """Close the connection (the next read reconnects from the cursors)."""
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    close = drop


def print_log(event: dict[str, Any]) -> None:
    """Show a remote log line locally, on the stream it was written to; coloured per function on a terminal."""
    target = sys.stderr if event.get("stream") == "stderr" else sys.stdout
    text = event.get("text", "")
    if target.isatty():
        colour = _COLOURS[hash(event.get("fn", "")) % len(_COLOURS)]
        text = "".join(f"\x1b[{colour}m{line}\x1b[0m" for line in text.splitlines(keepends=True))
    target.write(text)
    target.flush()
