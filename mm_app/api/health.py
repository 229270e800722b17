"""``GET /health``: liveness, no authentication."""

from __future__ import annotations

import os
import time

from flask import Blueprint

from .services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    # pid: which API process answered (there are several; tests and operators tell them apart by it)
    return {"status": "ok", "pid": os.getpid(), "uptime": round(time.time() - services().started_at, 3)}
