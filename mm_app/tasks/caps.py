"""Caps on what one input may push into Redis: generator item size, log entry size, log volume.

A function that yields a huge item or prints without end would otherwise fill Redis (and every
client that reads its stream). Past a cap, what is dropped is replaced by a marker that says so,
naming the setting to raise; the call itself goes on.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

from minimodal import config

TRUNCATED = "[minimodal: truncated]"  # every marker starts with this, so that readers can find them


@dataclass(frozen=True)
class OutputCaps:
    max_item_size: int  # bytes of one pickled generator item
    max_log_line: int  # characters of one log entry
    max_log_bytes: int  # characters one input may print in all

    @classmethod
    def from_config(cls) -> OutputCaps:
        return cls(config.get("max_item_size"), config.get("max_log_line"), config.get("max_log_bytes"))

    def item(self, n: int, data: bytes) -> bytes:
        """The item as sent, or (over the cap) a pickled marker string in its place."""
        if len(data) <= self.max_item_size:
            return data
        marker = (
            f"{TRUNCATED} generator item {n} was {len(data):,} bytes pickled, over the maximum of "
            f"{self.max_item_size:,} (MINIMODAL_MAX_ITEM_SIZE); it was dropped"
        )
        return pickle.dumps(marker, protocol=4)  # a fresh str: nothing of the user's is unpickled


class LogBudget:
    """What one input may still print: cuts long entries and, past the total, drops the rest after one marker."""

    def __init__(self, caps: OutputCaps) -> None:
        self.caps = caps
        self.used = 0
        self.exhausted = False

    def take(self, text: str) -> str | None:
        """The text to store (perhaps cut, perhaps a marker), or None when nothing more is stored."""
        if self.exhausted:
            return None
        if len(text) > self.caps.max_log_line:
            cut = len(text) - self.caps.max_log_line
            text = text[: self.caps.max_log_line] + f"\n{TRUNCATED} {cut:,} more characters of this entry dropped "
            text += "(MINIMODAL_MAX_LOG_LINE)\n"
        self.used += len(text)
        if self.used > self.caps.max_log_bytes:
            self.exhausted = True
            return (
                f"{TRUNCATED} this input printed over {self.caps.max_log_bytes:,} characters "
                "(MINIMODAL_MAX_LOG_BYTES); the rest of its output is dropped\n"
            )
        return text
