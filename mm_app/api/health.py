"""``GET /health``: liveness, no authentication."""

from __future__ import annotations

import time

from flask import Blueprint

from .services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    return {"status": "ok", "uptime": round(time.time() - services().started_at, 3)}
