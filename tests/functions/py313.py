"""An app whose image runs Python 3.13, called from this 3.11 client: imported by name, so versions may differ."""

from __future__ import annotations

from dataclasses import dataclass

import minimodal

newer = minimodal.App("tests-model-py313", image=minimodal.Image.debian_slim(python_version="3.13"))


@dataclass
class Reading:
    """Defined in the module: importable on both sides, so it travels by reference between Pythons."""

    name: str
    value: float


@newer.function()
def on_313(reading: Reading) -> tuple[str, Reading]:
    import sys

    return f"{sys.version_info[0]}.{sys.version_info[1]}", Reading(reading.name.upper(), reading.value * 2)
