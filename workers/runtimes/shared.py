"""Several inputs in flight on one runner at once (``@concurrent``, ``@batched``): frames tagged per input.

A runner loaded with ``max_inputs`` > 1 answers every frame of an input with the ``tag`` its CALL frame
gave it (sdk/_runner.py ``_Concurrent``). Here each input is one caller thread (one Celery task, or one
input of a task): it sends its CALL frame and then reads only its own frames. No thread of its own
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

from minimodal._frames import Frame, Kind

from .base import FrameLink, LogSink, Outcome

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

    def call(self, payload: bytes, **call: Any) -> Outcome:
        """:meth:`FrameLink.call` on a share of the runner of its own: one tag, one inbox."""
        with self._lock:
            tag, self._next_tag = self._next_tag, self._next_tag + 1
            inbox = self._inboxes[tag] = queue.SimpleQueue()
            self.in_flight += 1
        return _Share(self, tag, inbox).call(payload, **call)

    def _end(self, tag: int) -> None:
        with self._lock:
            self._inboxes.pop(tag, None)
            self.in_flight -= 1

    def _send(self, kind: Kind, header: dict[str, Any], body: bytes, deadline: float) -> None:
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
        elif kind == Kind.LOG:
            logger.info("runner output of no running input: %s", body.decode("utf-8", "replace").rstrip())


class _Share(FrameLink):
    """One input's share of a shared runner: its frames go out with its tag and come from its inbox."""

    def __init__(self, calls: SharedCalls, tag: int, inbox: queue.SimpleQueue[Frame | None]) -> None:
        self.calls, self.tag, self.inbox = calls, tag, inbox

    @property
    def timeout(self) -> float:
        return self.calls.runner.spec.timeout

    def begin_input(self, on_log: LogSink | None) -> bool:
        return not self.calls.broken

    def send_frame(self, kind: Kind, header: dict[str, Any], body: bytes, deadline: float) -> None:
        self.calls._send(kind, {**header, "tag": self.tag}, body, deadline)

    def read_frame(self, deadline: float) -> Frame | None:
        return self.calls._next_frame(self.inbox, deadline)

    def lost(self, started: float, idx: int) -> Outcome:
        return self.calls._lost(started, idx)

    def time_out(self) -> str:
        self.calls._break()
        self.calls.runner.stop()
        return "its runner was stopped, with the other inputs it was running"

    def finish_input(self) -> None:
        self.calls._end(self.tag)
