"""The wire contract between the SDK, the API, the dispatcher, the workers and the runner.

What the client, the API and the runner must agree on lives here and nowhere else: call, image and
sandbox statuses, ids, the output, item and log envelopes, GPU specs and the payload checks the API may
make without unpickling anything. What only the server reads (its Redis key layout, Celery task and
queue names, pending entries and placement records) is ``mm_app/keyspace.py``, not shipped to users'
code. This module imports only the standard library so the in-container runner may use it.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable
from enum import StrEnum

PICKLE_PROTOCOLS = (2, 3, 4, 5)


class CallStatus(StrEnum):
    """Where one input of a function call stands. The last four are terminal."""

    QUEUED = "queued"  # accepted, waiting in its user's pending queue
    DISPATCHED = "dispatched"  # handed to a Celery queue
    RUNNING = "running"  # a worker is running it
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({CallStatus.COMPLETED, CallStatus.FAILED, CallStatus.DEAD_LETTER, CallStatus.CANCELLED})


class ImageStatus(StrEnum):
    """Where an image build stands. ``process`` means no Docker worker: run in a runner process."""

    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    PROCESS = "process"


class SandboxState(StrEnum):
    """Where a sandbox stands. The last four are terminal."""

    QUEUED = "queued"  # accepted, waiting in its user's pending queue for a worker slot
    RUNNING = "running"  # its container runs on a worker
    FINISHED = "finished"  # its entrypoint exited by itself (``returncode`` is its exit code)
    TERMINATED = "terminated"  # ``terminate()``, ``app stop``, or its worker was lost
    TIMEOUT = "timeout"  # past its ``timeout`` or ``idle_timeout``
    FAILED = "failed"  # it could not start (image, Docker, a deleted secret): ``error`` says why

    @property
    def terminal(self) -> bool:
        return self not in (SandboxState.QUEUED, SandboxState.RUNNING)


SANDBOX_ENTRYPOINT = "ep"  # the process id of a sandbox's entrypoint command (exec'd processes are ``sp-...``)


SANDBOX_PREFIX = "sb-"  # the ids of sandboxes (pending entries and ledger tasks carry them as call ids)


def is_sandbox(object_id: str) -> bool:
    """A pending entry (or ledger task) whose call id is a sandbox's: placed like a call, run as a sandbox."""
    return object_id.startswith(SANDBOX_PREFIX)


_PYTHON_VERSION = re.compile(r"^3\.\d{1,2}$")


def is_python_version(value: object) -> bool:
    """Whether ``value`` is a Python major.minor string as images carry it (``"3.13"``)."""
    return isinstance(value, str) and _PYTHON_VERSION.match(value) is not None


def sorted_pythons(versions: Iterable[str]) -> list[str]:
    """Distinct major.minor versions in numeric order (3.9 before 3.11)."""
    return sorted(set(versions), key=lambda v: tuple(int(p) for p in v.split(".")))


def new_id(prefix: str) -> str:
    """A fresh object id such as ``fc-3kT9...`` (Modal's prefixes: ap, fu, fc, bl)."""
    return f"{prefix}-{secrets.token_urlsafe(12).replace('-', 'x').replace('_', 'y')}"


def new_token() -> str:
    """A fresh bearer token; only its SHA-256 is stored."""
    return "mm_" + secrets.token_urlsafe(32)


# ---- Placement records --------------------------------------------------------------------------

GPU_ANY = "ANY"  # a function's gpu="any": any model will do


def parse_gpu(spec: str | None) -> tuple[str, int]:
    """``"T4"`` -> ``("T4", 1)``, ``"a100-80gb:2"`` -> ``("A100-80GB", 2)``, ``"any"`` -> ``("ANY", 1)``.

    Raises ValueError for anything else. ``None`` or ``""`` is ``("", 0)``: no GPU.
    """
    if not spec:
        return "", 0
    if not isinstance(spec, str):
        raise ValueError(f"gpu={spec!r}: give a GPU type such as 'T4', 'A100:2' or 'any'")
    label, _, count = spec.strip().partition(":")
    label = label.strip().upper()
    if not label or not all(c.isalnum() or c in "-_." for c in label):
        raise ValueError(f"gpu={spec!r}: give a GPU type such as 'T4', 'A100:2' or 'any'")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"gpu={spec!r}: the count after ':' must be a whole number") from None
    if n < 1:
        raise ValueError(f"gpu={spec!r}: the count after ':' must be at least 1")
    return label, n


# ---- Payloads and outputs ---------------------------------------------------------------------

BLOB_REF_PREFIX = b"mm-blob:"


def blob_ref(blob_id: str) -> bytes:
    """An input or output stored as a blob is replaced by this marker."""
    return BLOB_REF_PREFIX + blob_id.encode()


def parse_blob_ref(value: bytes) -> str | None:
    return value[len(BLOB_REF_PREFIX) :].decode() if value.startswith(BLOB_REF_PREFIX) else None


def looks_like_pickle(data: bytes) -> bool:
    """True when ``data`` is framed as a pickle (PROTO header, STOP at the end).

    The control plane never unpickles user payloads; this framing check is all it may do.
    """
    return len(data) >= 3 and data[0] == 0x80 and data[1] in PICKLE_PROTOCOLS and data[-1:] == b"."


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


# Output envelope fields (Redis stream entry fields and the JSON the API returns).
OUT_INDEX = "idx"
OUT_STATUS = "status"  # a terminal CallStatus value
OUT_DATA = "data"  # pickled return value, or pickled exception on failure (may be absent)
OUT_BLOB = "blob"  # blob id when the pickled value was too large to inline
OUT_ERROR_TYPE = "error_type"  # name in minimodal.exception for platform-side failures
OUT_MESSAGE = "message"
OUT_TRACEBACK = "traceback"
OUT_ITEMS = "items"  # for a generator: how many items it yielded before it ended
OUT_ENDED_AT = "ended_at"  # the worker's clock when the input ended (seconds since the epoch)

# Item stream entries: an item has ITEM_INDEX and ITEM_N and data or blob; the end of an input's
# generator has ITEM_INDEX, ITEM_DONE=1, ITEM_COUNT and OUT_STATUS.
ITEM_INDEX = "idx"
ITEM_N = "n"
ITEM_DONE = "done"
ITEM_COUNT = "count"

# Log stream entries.
LOG_INDEX = "idx"
LOG_STREAM = "stream"  # stdout | stderr
LOG_TEXT = "text"
LOG_FUNCTION = "fn"


LOG_SOURCE = "src"  # one attempt of one input: its lines are numbered from 0 in LOG_SEQ
LOG_CONTAINER = "ctr"  # the container (ct-...) that printed it: `minimodal container logs`
LOG_SEQ = "seq"  # a client that reads a line from two streams (call and app) shows it once
