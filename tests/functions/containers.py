"""Functions the Docker runtime tests run inside containers.

Containers have no ``tests`` package, so the tests register this module with
``cloudpickle.register_pickle_by_value`` and its functions travel by value. Keep them to the standard
library.
"""

from __future__ import annotations

import os
import socket
import sys
import time


def whoami() -> dict[str, object]:
    """Where the function runs: container marker, uid, host name, Python, effective capabilities."""
    with open("/proc/self/status") as status:
        capabilities = next(line.split()[1] for line in status if line.startswith("CapEff:"))
    return {
        "dockerenv": os.path.exists("/.dockerenv"),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "hostname": socket.gethostname(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "capabilities": int(capabilities, 16),
    }


def add(a: int, b: int = 0) -> int:
    return a + b


def noop() -> None:
    return None


def fail(message: str) -> None:
    raise ValueError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def hog_memory(mib: int) -> int:
    """Allocate and touch ``mib`` MiB (``bytes * n`` writes every page, unlike a zeroed bytearray)."""
    block = b"x" * (mib * 1024 * 1024)
    return len(block)


def exit_hard(code: int, last_words: str = "") -> None:
    """Leave without a word to the runner; ``last_words`` go straight to file descriptor 2 first."""
    if last_words:
        os.write(2, last_words.encode() + b"\n")
    os._exit(code)


def chatter(text: str) -> str:
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return text
