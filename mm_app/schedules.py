"""Schedules (placeholder until the reconciler lands)."""

from __future__ import annotations

from typing import Any


def reconcile_user(services: Any, user_id: int) -> None:
    return None
