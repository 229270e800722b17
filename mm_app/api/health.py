"""``GET /health``: liveness, no authentication."""

from __future__ import annotations

import os
import time

from flask import Blueprint

from .schema import Doc, Reply
from .services import services

bp = Blueprint("health", __name__)
doc = Doc("operations", security="none")


class Health(Reply):
    status: str
    pid: int  # the API process that answered
    uptime: float


@bp.get("/health")
@doc("Liveness", reply=Health)
def health():  # type: ignore[no-untyped-def]
    # pid: which API process answered (there are several; tests and operators tell them apart by it)
    return {"status": "ok", "pid": os.getpid(), "uptime": round(time.time() - services().started_at, 3)}
