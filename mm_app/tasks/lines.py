"""One input's printed text, cut into whole lines before it is stored, so that lines never tear.

The runner sends every ``write()`` as it happens: ``print("hello", i)`` is two writes (the text, then
``"\\n"``), and the writes of inputs running side by side would interleave in the call's log stream.
:class:`LineBuffer` keeps stdout and stderr apart and hands on only whole lines: text up to and
including ``\\n``, ``\\r\\n`` or ``\\r`` (a progress bar redraws its line with ``\\r``; the client writes
such a line without adding a newline, so the bar renders). What is left without an end (a prompt, a
bar between redraws) is handed on when the input ends, or once it has waited
``DEFAULT_PARTIAL_LINE_SECONDS``, by one flusher thread per worker process.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from minimodal.defaults import DEFAULT_PARTIAL_LINE_SECONDS

_END = re.compile(r"\r\n|\n|\r")
_TICK = 0.05  # seconds between the flusher's looks at the partial lines it watches

Emit = Callable[[list[tuple[str, str]]], None]  # [(stream, line), ...], in the order they were written


def split_lines(text: str) -> tuple[list[str], str]:
    """The whole lines of ``text`` (each with its end) and what is left after the last one.

    A ``\\r`` at the very end is held back: a ``\\n`` may follow in the next write.
    """
    lines, start = [], 0
    for match in _END.finditer(text):
        if match.group() == "\r" and match.end() == len(text):
            break
        lines.append(text[start : match.end()])
        start = match.end()
    return lines, text[start:]


class LineBuffer:
    """Line-buffers the streams of one input; ``emit`` gets whole lines, in order, one call per write."""

    def __init__(self, emit: Emit, max_partial: int, delay: float = DEFAULT_PARTIAL_LINE_SECONDS) -> None:
        self._emit, self._max_partial, self._delay = emit, max_partial, delay
        self._partial: dict[str, str] = {}
        self._since: dict[str, float] = {}  # stream -> when its partial line began
        self._lock = threading.Lock()  # held while emitting too: lines reach Redis in the order written

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            lines, rest = split_lines(self._partial.get(stream, "") + text)
            if len(rest) >= self._max_partial:  # a very long line without an end goes as it is
                lines, rest = [*lines, rest], ""
            self._partial[stream] = rest
            if not rest:
                self._since.pop(stream, None)
            else:
                self._since.setdefault(stream, time.monotonic())
            if lines:
                self._emit([(stream, line) for line in lines])
        if rest:
            _flusher.watch(self)

    def flush(self, older_than: float | None = None) -> bool:
        """Hand on the partial lines (only those waiting ``older_than`` s, if given); True if some remain."""
        with self._lock:
            now, out = time.monotonic(), []
            for stream, since in list(self._since.items()):
                if older_than is None or now - since >= older_than:
                    out.append((stream, self._partial.pop(stream)))
                    del self._since[stream]
            if out:
                self._emit(out)
            return bool(self._since)

    def close(self) -> None:
        """The input ended: hand on whatever is left."""
        self.flush()


class _Flusher:
    """One thread per process that hands on partial lines once they have waited long enough."""

    def __init__(self) -> None:
        self._buffers: set[LineBuffer] = set()
        self._lock = threading.Lock()
        self._running = False

    def watch(self, buffer: LineBuffer) -> None:
        with self._lock:
            self._buffers.add(buffer)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="mm-log-flusher", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            with self._lock:
                buffers = list(self._buffers)
            done = {buffer for buffer in buffers if not _flush_quietly(buffer)}
            with self._lock:
                self._buffers -= {buffer for buffer in done if not buffer._since}  # not written to since
                if not self._buffers:
                    self._running = False  # started again by the next partial line
                    return


def _flush_quietly(buffer: LineBuffer) -> bool:
    try:
        return buffer.flush(older_than=buffer._delay)
    except Exception:  # noqa: BLE001 - the sink logs its own failures; a bad buffer must not stop the thread
        return False


_flusher = _Flusher()
