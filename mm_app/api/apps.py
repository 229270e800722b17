"""Apps and their functions: ``POST /v1/apps`` stores every function's code and options in one request."""

from __future__ import annotations

import binascii
import hashlib
import json
from typing import Any

from flask import Blueprint, g
from minimodal import protocol
from minimodal.exception import InvalidError, NotFoundError

from ..models import AppRecord, FunctionRecord, utcnow
from .auth import authenticate, field, json_body
from .services import services

bp = Blueprint("apps", __name__, url_prefix="/v1")
bp.before_request(authenticate)

# Options the workers act on, with their JSON types. Anything else is refused, never ignored.
_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "cpu": (int, float),
    "memory": int,
    "timeout": int,
    "scaledown_window": int,
}


def _parse_options(tag: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidError(f"function {tag!r}: options must be an object")
    unknown = sorted(set(raw) - set(_OPTIONS))
    if unknown:
        raise InvalidError(f"function {tag!r}: unknown options {unknown}; known: {sorted(_OPTIONS)}")
    options = {name: field(raw, name, kind, required=False) for name, kind in _OPTIONS.items()}
    for name, value in options.items():
        if value is not None and value <= 0:
            raise InvalidError(f"function {tag!r}: option {name} must be positive")
    return {k: v for k, v in options.items() if v is not None}


def _parse_code(tag: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidError(f"function {tag!r}: code must be a base64 string")
    try:
        code = protocol.unb64(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidError(f"function {tag!r}: code is not valid base64") from exc
    if not protocol.looks_like_pickle(code):
        raise InvalidError(f"function {tag!r}: code is not a pickle (expected a protocol 2-5 header)")
    return code


@bp.post("/apps")
def create_app_record():  # type: ignore[no-untyped-def]
    body = json_body()
    name = field(body, "name", str, required=False)
    specs = field(body, "functions", list, required=False, default=[])
    app_id = protocol.new_id("ap")
    records, ids = [], {}
    for spec in specs:
        if not isinstance(spec, dict):
            raise InvalidError("each function must be an object with tag, code and options")
        tag = field(spec, "tag", str)
        if tag in ids:
            raise InvalidError(f"function tag {tag!r} appears twice")
        code = _parse_code(tag, spec.get("code"))
        options = _parse_options(tag, spec.get("options"))
        code_hash = hashlib.sha256(code + json.dumps(options, sort_keys=True).encode()).hexdigest()
        ids[tag] = protocol.new_id("fu")
        records.append(
            FunctionRecord(
                id=ids[tag], app_id=app_id, user_id=g.user.id, tag=tag, code=code, code_hash=code_hash, options=options
            )
        )
    with services().db.write() as session:
        session.add(AppRecord(id=app_id, user_id=g.user.id, name=name))
        session.flush()
        session.add_all(records)
    return {"app_id": app_id, "functions": ids}, 201


def _own_app(session: Any, app_id: str) -> AppRecord:
    record = session.get(AppRecord, app_id)
    if record is None or record.user_id != g.user.id:
        raise NotFoundError(f"no app {app_id!r}")
    return record


@bp.post("/apps/<app_id>/stop")
def stop_app(app_id: str):  # type: ignore[no-untyped-def]
    with services().db.write() as session:
        record = _own_app(session, app_id)
        if record.state != "stopped":
            record.state, record.stopped_at = "stopped", utcnow()
    return {"app_id": app_id, "state": "stopped"}


@bp.get("/functions/<function_id>")
def get_function(function_id: str):  # type: ignore[no-untyped-def]
    with services().db.read() as session:
        record = session.get(FunctionRecord, function_id)
        if record is None or record.user_id != g.user.id:
            raise NotFoundError(f"no function {function_id!r}")
        return {"function_id": record.id, "app_id": record.app_id, "tag": record.tag, "options": record.options}
