"""The runner's frames: the one wire format between a worker and the runner it started.

Standard library only: the in-container runner (``sdk/_runner.py``) imports it, and so does every
runtime (``workers/runtimes/``). A frame is ``kind (1 byte) | header length (4) | body length (4) |
JSON header | body``, the lengths big-endian. :class:`Kind` names every kind of frame once; what each
header holds is told in ``sdk/_runner.py``.

Example::

    write_frame(stdin, Kind.CALL, {"call_id": "fc-1", "idx": 0}, payload)
    kind, header, body = read_frame(stdout)
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable
from typing import IO, Any


class Kind(bytes, enum.Enum):
    """What a frame is; the value is its first byte on the wire."""

    # worker to runner
    SOURCE = b"S"  # the app's shipped source (a zip), before FUNCTION when the function is imported by name
    FUNCTION = b"F"  # the function to load, once: header how (``import``, ``max_inputs``, ``batch``); body pickled
    CALL = b"C"  # one input: header ``call_id``, ``idx``, ``env``, ``tag``; body the pickled ``(args, kwargs)``
    ANSWER = b"A"  # the answer to a REQUEST: header the JSON answer, echoing its ``rid`` (and ``tag``)
    # runner to worker
    READY = b"R"  # the function is loaded: header ``pid``, ``python``
    LOAD_ERROR = b"E"  # the function failed to load: header ``type``, ``repr``, ``traceback``
    LOG = b"L"  # a chunk of printed text: header ``stream``; body the text
    ITEM = b"Y"  # one item of a generator: header ``n``; body the pickled item
    OUTPUT = b"O"  # the output of one input: header ``ok``, ``items``, ...; body the pickled value or exception
    REQUEST = b"Q"  # the running input asks the platform something (a Dict or Queue operation): header the JSON


PREFIX = struct.Struct(">cII")  # kind, header length, body length

Frame = tuple[Kind, dict[str, Any], bytes]


def _head(kind: Kind, header: dict[str, Any] | None, body_length: int) -> bytes:
    head = json.dumps(header or {}, separators=(",", ":")).encode()
    return PREFIX.pack(kind.value, len(head), body_length) + head


def encode_frame(kind: Kind, header: dict[str, Any] | None = None, body: bytes = b"") -> bytes:
    """One frame as bytes."""
    return _head(kind, header, len(body)) + body


def write_frame(out: IO[bytes], kind: Kind, header: dict[str, Any] | None = None, body: bytes = b"") -> None:
    """Write one frame to ``out`` and flush it (the body is written as it is, not copied)."""
    out.write(_head(kind, header, len(body)))
    if body:
        out.write(body)
    out.flush()


def take_frame(buffer: bytearray, fill: Callable[[int], bool]) -> Frame | None:
    """The frame at the head of ``buffer``, removed from it; None when the stream ends first.

    ``fill(n)`` adds to ``buffer`` until it holds at least ``n`` bytes and says whether it could (it may
    raise ``TimeoutError``, leaving a partial frame in ``buffer`` for the next try). Raises ``ValueError``
    for bytes that are no frame (an unknown kind, a header that is not JSON).
    """
    if not fill(PREFIX.size):
        return None
    kind, hlen, blen = PREFIX.unpack_from(buffer)
    end = PREFIX.size + hlen + blen
    if not fill(end):
        return None
    with memoryview(buffer) as view:  # slices of a view copy once, into their destination
        head = bytes(view[PREFIX.size : PREFIX.size + hlen]) or b"{}"
        body = bytes(view[PREFIX.size + hlen : end])
    del buffer[:end]
    return Kind(kind), json.loads(head), body


def read_frame(inp: IO[bytes]) -> Frame | None:
    """Read one frame from a blocking stream; None at its end."""
    buffer = bytearray()

    def fill(n: int) -> bool:
        while len(buffer) < n:
            chunk = inp.read(n - len(buffer))
            if not chunk:
                return False
            buffer.extend(chunk)
        return True

    return take_frame(buffer, fill)
