"""The operator's view, as one blueprint: ``/ready``, ``/stats``, ``/metrics``, ``/openapi.json``, ``/dashboard``.

It also binds each request's ids (call, function, user) for JSON logs and, when those are on, writes
one access line per request carrying them (see :mod:`mm_app.observability`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, g, has_app_context, request

from .. import observability
from . import dashboard, metrics, openapi, stats

bp = Blueprint("observe", __name__)
bp.register_blueprint(stats.bp)
bp.register_blueprint(metrics.bp)
bp.register_blueprint(openapi.bp)
bp.register_blueprint(dashboard.bp)

access_log = logging.getLogger("minimodal.api.access")
_SMALL_REPLY = 64 * 1024  # replies read back for a call id (a new call's id is only in its reply)


def _user_of_request() -> dict[str, Any]:
    user = g.get("user") if has_app_context() else None
    return {"user_id": user.id} if user is not None else {}


@bp.record_once
def _setup(state: Any) -> None:
    observability.add_context_source(_user_of_request)


@bp.before_app_request
def _bind_request() -> None:
    if not observability.json_enabled():
        return
    g.mm_started = time.perf_counter()
    view_args = request.view_args or {}
    observability.bind(call_id=view_args.get("call_id"), function_id=view_args.get("function_id"), user_id=None)


@bp.after_app_request
def _log_request(response: Response) -> Response:
    if not observability.json_enabled():
        return response
    fields = _user_of_request()
    if (
        response.is_json
        and not response.is_streamed
        and response.content_length is not None
        and response.content_length <= _SMALL_REPLY
    ):
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("call_id"), str):
            fields["call_id"] = body["call_id"]
    observability.bind(**fields)
    started = g.get("mm_started")
    access_log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
        },
    )
    return response
