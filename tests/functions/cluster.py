"""Functions the two-machine test runs in containers of an image built on the first machine's engine."""

from __future__ import annotations

import os
import time

MARKER = "/opt/mm-cluster-marker"  # written by the image's own layer


def marker(variable: str) -> tuple[str, str | None]:
    """What the image's layer wrote (only a container of that image has it), and a secret's variable."""
    with open(MARKER) as source:
        return source.read().strip(), os.environ.get(variable)


def double_slowly(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return 2 * x


def variable(name: str) -> str | None:
    return os.environ.get(name)
