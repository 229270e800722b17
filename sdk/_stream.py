"""Reading a call's live events (generator items, outputs, printed logs) on the client.

:class:`CallEvents` keeps one cursor per kind. It reads over a WebSocket that the server pushes to,
and reconnects from the last cursors when the connection drops (backoff from 1 ms, x10, up to 1 s,
ten tries: ``_backoff.py``); where no WebSocket can be opened it falls back to HTTP long-poll. Either way every event
arrives once and in order: anything at or before a cursor is dropped.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import protocol
from ._backoff import Backoff, Retrying
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
        backoff = Backoff(0.001, factor=10, most=1.0, tries=10)

        def wait_after(exc: Exception) -> float | None:
            if isinstance(exc, HandshakeError) and exc.status in (400, 401, 403, 404, 405, 426):
                return None  # refused for good, or the server speaks no WebSocket here
            return backoff.next_wait() if isinstance(exc, (HandshakeError, OSError)) else None

        try:
            for attempt in Retrying(wait_after):
                with attempt:
                    return WebSocket.connect(url, headers, timeout=10)
        except HandshakeError as exc:
            if exc.status in (401, 403, 404):
                try:
                    error = json.loads(exc.body)["error"]
                    raise from_response(exc.status, error.get("type"), error["message"]) from None
                except (ValueError, KeyError):
                    raise from_response(exc.status, None, f"HTTP {exc.status}") from None
        except OSError:
            pass
        self.websocket, self.transport = False, "long-poll"  # out of tries, or no WebSocket here: long-poll
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


class _Shown:
    """The last line shown of each input attempt: a line read from two streams (call and app) shows once."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def first_time(self, event: dict[str, Any]) -> bool:
        source, seq = event.get(protocol.LOG_SOURCE), event.get(protocol.LOG_SEQ)
        if source is None or seq is None:
            return True  # written by an older worker: nothing to tell it by
        with self._lock:
            if int(seq) <= self._last.get(source, -1):
                return False
            self._last[source] = int(seq)
            return True


_shown = _Shown()


def print_log(event: dict[str, Any]) -> None:
    """Show a remote log line locally, on the stream it was written to; coloured per function on a terminal.

    A line ends with its own newline, or with ``\r`` (a progress bar redrawing itself): nothing is added.
    """
    if not _shown.first_time(event):
        return
    target = sys.stderr if event.get("stream") == "stderr" else sys.stdout
    text = event.get("text", "")
    if target.isatty():
        colour = _COLOURS[hash(event.get("fn", "")) % len(_COLOURS)]
        text = "".join(f"\x1b[{colour}m{line}\x1b[0m" for line in text.splitlines(keepends=True))
    with _print_lock:  # several threads print (a .map's reader, the app's follower): whole lines each
        target.write(text)
        target.flush()


_print_lock = threading.Lock()


class AppLogs:
    """Shows what every call of a running app prints, as it prints it: spawned and nested calls too.

    ``with minimodal.enable_output(), app.run():`` follows the app's log stream in a thread; lines that a
    ``.remote()`` or ``.map`` also reads from its own call's stream are shown once (:class:`_Shown`).
    ``stop()`` shows what is left in the stream and ends the thread.
    """

    def __init__(self, client: Client, app_id: str) -> None:
        self.client, self.app_id = client, app_id
        self.cursor = "0-0"
        self._lock = threading.Lock()  # one reader prints at a time, so lines stay in stream order
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="minimodal-app-logs", daemon=True)
        self._thread.start()
        _following.add(self)

    def catch_up(self) -> None:
        """Show every line already in the stream now (a call whose result is in has all its lines there)."""
        with contextlib.suppress(Exception):
            while self._read(follow=False) > 0:
                pass

    def _read(self, follow: bool) -> int:
        """Show what comes after the cursor (waiting for it when ``follow``); how many lines, -1 once stopped."""
        reply = self.client.request(
            "GET", f"/v1/apps/{self.app_id}/logs", params={"cursor": self.cursor, "follow": int(follow)}, timeout=60
        )
        with self._lock:
            if self._stopped.is_set():
                return -1
            fresh = [event for event in reply["logs"] if _after(event["cursor"], self.cursor)]
            for event in fresh:
                print_log(event)
                self.cursor = event["cursor"]
        return len(fresh)

    def _follow(self) -> None:
        while not self._stopped.is_set():
            try:
                if self._read(follow=True) < 0:
                    return
            except Exception:  # noqa: BLE001 - the API may be restarting: the cursor makes the retry lossless
                if self._stopped.wait(0.5):
                    return

    def stop(self) -> None:
        """Show the lines still in the stream, then stop following."""
        self.catch_up()
        with self._lock:
            self._stopped.set()
        _following.discard(self)


_following: set[AppLogs] = set()


def catch_up() -> None:
    """Before a spawned call's result is handed over: show what it printed (and all else printed so far)."""
    for follower in list(_following):
        follower.catch_up()
