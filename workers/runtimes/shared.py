"""Several inputs in flight on one runner at once (``@concurrent``, ``@batched``): frames tagged per input.

A runner loaded with ``max_inputs`` > 1 answers every frame of an input with the ``tag`` its ``C`` frame
gave it (sdk/_runner.py ``_Concurrent``). Here each input is one caller thread (one Celery task, or one
input of a task): it sends its ``C`` frame and then reads only its own frames. No thread of its own
reads the runner: whichever caller holds the read lock reads the next frame and drops it in the inbox
of the input it belongs to, so the frames of all inputs are read in order, once, by their callers.

A timeout is per input, as for one input at a time: the input that runs past it stops the runner, and
the others it was running end as if the runner had died (``runner_lost``; retried under the function's
retry policy). Text written straight to file descriptors 1 and 2 cannot be told apart by input here: it
goes to the worker's log, not to a call's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from .base import Frame, ItemSink, LogSink, Outcome, RequestHandler, call_header, serve_frames

if TYPE_CHECKING:
    from .base import Runner

logger = logging.getLogger("minimodal.workers.shared")

_FOLLOW = 0.02  # seconds an input waits on its inbox before it tries to read for everyone
_LEAD = 0.1  # seconds the reading input waits for a frame before it lets another read


class SharedCalls:
    """The inputs in flight on one runner; thread-safe."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._lock = threading.Lock()  # tags and inboxes
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._inboxes: dict[int, queue.SimpleQueue[Frame | None]] = {}
        self._next_tag = 0
        self.broken = False  # the runner died or was stopped: no new input may use it
        self.in_flight = 0

    def call(
        self,
        payload: bytes,
        *,
        call_id: str,
        idx: int,
        on_log: LogSink | None = None,
        on_item: ItemSink | None = None,
        on_request: RequestHandler | None = None,
        env: dict[str, str] | None = None,
    ) -> Outcome:
        started = time.monotonic()
        deadline = started + self.runner.spec.timeout
        inbox: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()
        with self._lock:
            tag, self._next_tag = self._next_tag, self._next_tag + 1
            self._inboxes[tag] = inbox
            self.in_flight += 1
        try:
            if self.broken:
                return self._lost(started, idx)
            self._send(b"C", {**call_header(call_id, idx, env), "tag": tag}, payload, deadline)
            outcome = serve_frames(
                lambda: self._next_frame(inbox, deadline),
                started,
                on_log=on_log,
                on_item=on_item,
                on_request=on_request,
                send=lambda kind, header, body: self._send(kind, {**header, "tag": tag}, body, deadline),
            )
            return outcome if outcome is not None else self._lost(started, idx)
        except TimeoutError:
            self._break()
            self.runner.stop()
            return Outcome(
                ok=False,
                error_type="FunctionTimeoutError",
                message=f"input {idx} of {call_id} ran past its timeout of {self.runner.spec.timeout:g} s; its "
                "runner was stopped, with the other inputs it was running",
                duration=time.monotonic() - started,
                runner_lost=True,
            )
        except (OSError, ValueError):  # the pipe or socket broke, or stop() closed it from another thread
            return self._lost(started, idx)
        finally:
            with self._lock:
                self._inboxes.pop(tag, None)
                self.in_flight -= 1

    def _send(self, kind: bytes, header: dict[str, Any], body: bytes, deadline: float) -> None:
        with self._send_lock:
            self.runner.send_frame(kind, header, body, deadline)

    def _lost(self, started: float, idx: int) -> Outcome:
        self._break()
        return self.runner.lost(started, idx)

    def _break(self) -> None:
        """The runner is gone: every input waiting on it wakes up to an end of stream."""
        with self._lock:
            self.broken = True
            for inbox in self._inboxes.values():
                inbox.put(None)

    def _next_frame(self, inbox: queue.SimpleQueue[Frame | None], deadline: float) -> Frame | None:
        """This input's next frame, reading the runner for everyone while no other input does."""
        while True:
            try:
                return inbox.get_nowait()
            except queue.Empty:
                pass
            if self.broken:
                return None
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            if self._read_lock.acquire(blocking=False):
                try:
                    if inbox.empty():
                        self._read_one(min(deadline, now + _LEAD))
                finally:
                    self._read_lock.release()
            else:
                try:
                    return inbox.get(timeout=min(_FOLLOW, deadline - now))
                except queue.Empty:
                    pass

    def _read_one(self, until: float) -> None:
        try:
            frame = self.runner.read_frame(until)
        except TimeoutError:
            return  # nothing yet (a frame cut in the middle stays buffered in the reader)
        if frame is None:
            self._break()
            return
        kind, header, body = frame
        tag = header.pop("tag", None)
        with self._lock:
            inbox = self._inboxes.get(tag) if isinstance(tag, int) else None
        if inbox is not None:
            inbox.put((kind, header, body))
        elif kind == b"L":
            logger.info("runner output of no running input: %s", body.decode("utf-8", "replace").rstrip())
