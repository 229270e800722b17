"""Schedules for deployed functions: ``schedule=minimodal.Period(hours=1)`` or ``minimodal.Cron("0 9 * * 1")``.

Example::

    @app.function(schedule=minimodal.Cron("*/5 * * * *", timezone="Europe/Paris"))
    def refresh():
        ...

A schedule takes effect when the app is deployed (``minimodal deploy``), not under ``minimodal run``;
each run is an ordinary call with no arguments (visible in ``minimodal app history``).
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from .exception import InvalidError


class Schedule:
    """Base of :class:`Period` and :class:`Cron`."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


class Period(Schedule):
    """Run every fixed interval, the first run when the deploy takes effect."""

    def __init__(self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> None:
        self.seconds = float(days) * 86400 + float(hours) * 3600 + float(minutes) * 60 + float(seconds)
        if self.seconds < 1:
            raise InvalidError(f"Period of {self.seconds:g} s: give at least 1 second")

    def __repr__(self) -> str:
        return f"Period(seconds={self.seconds:g})"

    def to_json(self) -> dict[str, Any]:
        return {"period": self.seconds}


class Cron(Schedule):
    """Run at the times a cron expression names (``minute hour day-of-month month day-of-week``)."""

    def __init__(self, cron_string: str, timezone: str = "UTC") -> None:
        fields = cron_string.split() if isinstance(cron_string, str) else []
        if len(fields) != 5:
            raise InvalidError(f"Cron({cron_string!r}): give 5 fields, 'minute hour day-of-month month day-of-week'")
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidError(f"Cron timezone {timezone!r} is not a known time zone (e.g. 'Europe/Paris')") from exc
        self.cron_string, self.timezone = " ".join(fields), timezone

    def __repr__(self) -> str:
        return f"Cron({self.cron_string!r}, timezone={self.timezone!r})"

    def to_json(self) -> dict[str, Any]:
        return {"cron": self.cron_string, "timezone": self.timezone}
