"""Functions that use a volume mounted at /data (deployed per test with the test's volume)."""

from __future__ import annotations

import os
import time
from typing import Any


def write(path: str, text: str) -> int:
    full = os.path.join("/data", path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as out:
        out.write(text)
    return len(text)


def read(path: str) -> str | None:
    full = os.path.join("/data", path)
    if not os.path.exists(full):
        return None
    with open(full) as source:
        return source.read()


def write_commit_then_wait(vol: Any, path: str, text: str, seconds: float) -> str:
    """Write, commit in the middle of the call, and keep running: others see it before this call ends."""
    write(path, text)
    vol.commit()
    time.sleep(seconds)
    return text


def reload_until(vol: Any, path: str, timeout: float) -> str | None:
    """Reload until ``path`` appears (another call commits it meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vol.reload()
        found = read(path)
        if found is not None:
            return found
        time.sleep(0.2)
    return None


def remove(path: str) -> bool:
    os.remove(os.path.join("/data", path))
    return True
