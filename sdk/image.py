"""``Image``: the container image a function runs in.

Only the default image exists so far: functions run in a warm runner process on the worker. Building
images into Docker containers is the next step; until then an explicit ``image=`` is refused with
:class:`~minimodal.exception.UnsupportedOptionError` rather than silently ignored.
"""

from __future__ import annotations

import sys


class Image:
    """An immutable description of a container image (Modal's builder API)."""

    def __init__(self, python_version: str | None = None) -> None:
        self.python_version = python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        return cls(python_version)
