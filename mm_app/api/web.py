"""Web endpoints of deployed apps: ``/web/{user}/{app}/{function}/...`` turns an HTTP request into a call.

The request becomes one envelope (method, path, query, headers, body), submitted as an ordinary call
of the current version's function; its generator items are the response: first the status and
headers, then body chunks, streamed to the HTTP client as they come (see minimodal/_webentry.py).
The items are pickles of plain values only (a dict of strings and numbers, then bytes): they are
read with an unpickler that refuses every global, so user code cannot make the API run anything.

Public unless the function says ``requires_proxy_auth=True``: then the caller must send the app
owner's token (401 otherwise), and that header is not passed on. A body over the payload limit is
413; a crash before the response started is a plain 500 (the traceback is in the app's logs).
"""

from __future__ import annotations

import io
import pickle
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import select

from minimodal import protocol
from minimodal.exception import AuthError, NotFoundError, PayloadTooLargeError
from mm_app import keyspace

from ..accounts import hash_token
from ..models import AppRecord, FunctionRecord, FunctionSpecRecord, UserRecord
from ..submit import submit_call
from .deploys import current
from .schema import Doc
from .services import services

bp = Blueprint("web", __name__)
doc = Doc("web", security="none")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
_APP_ID = re.compile(r"^ap-[A-Za-z0-9]{16}$")  # a URL naming an ephemeral app by its id
START_WAIT_SECONDS = 60  # beyond the function's timeout: time for a runner to start and the request to queue


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only: any global (a class, a function) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"web responses carry plain values only, not {module}.{name}")


def _plain(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def _resolve(user_name: str, app_name: str, tag: str) -> tuple[int, FunctionRecord, dict[str, Any]]:
    """The function behind a web URL: of the named app's current deployed version, or, when the name is an
    app id, of that running ephemeral app (``minimodal run``, ``app.run()``)."""
    svc = services()
    with svc.db.read() as session:
        user = session.scalars(select(UserRecord).where(UserRecord.name == user_name)).first()
        app_id = None
        if user is not None and user.revoked_at is None:
            if _APP_ID.match(app_name):
                ephemeral = session.get(AppRecord, app_name)
                if ephemeral is not None and ephemeral.user_id == user.id and ephemeral.state == "ephemeral":
                    app_id = ephemeral.id
            else:
                found = current(session, user.id, app_name)
                app_id = found[1].id if found is not None and found[1].state == "deployed" else None
        if user is None or app_id is None:
            raise NotFoundError(f"no deployed app {app_name!r} of {user_name!r}")
        record = session.scalars(
            select(FunctionRecord).where(FunctionRecord.app_id == app_id, FunctionRecord.tag == tag)
        ).first()
        spec = session.get(FunctionSpecRecord, record.id) if record is not None else None
        if record is None or spec is None or not spec.spec.get("web"):
            raise NotFoundError(f"app {app_name!r} has no web endpoint {tag!r}")
        session.expunge(record)
        return user.id, record, spec.spec["web"]


def _check_proxy_auth(user_id: int) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("this endpoint requires proxy auth: send `Authorization: Bearer <token>`")
    with services().db.read_core() as connection:
        owner = connection.execute(
            select(UserRecord.id).where(
                UserRecord.token_hash == hash_token(token.strip()), UserRecord.revoked_at.is_(None)
            )
        ).scalar()
    if owner != user_id:
        raise AuthError("invalid token for this endpoint")


@bp.route("/web/<user_name>/<app_name>/<tag>", methods=METHODS, defaults={"rest": ""}, strict_slashes=False)
@bp.route("/web/<user_name>/<app_name>/<tag>/<path:rest>", methods=METHODS)
@doc(
    "Call a web endpoint of a deployed app (public unless it requires proxy auth)",
    errors=(401, 404, 413),
    description="Answers what the endpoint answers: its status, headers and streamed body.",
    params={
        "user_name": "the app owner's user name",
        "app_name": "the deployed app",
        "tag": "the web endpoint function",
        "rest": "the path inside the endpoint's app",
    },
)
def serve(user_name: str, app_name: str, tag: str, rest: str):  # type: ignore[no-untyped-def]
    svc = services()
    user_id, record, web = _resolve(user_name, app_name, tag)
    headers = [[k, v] for k, v in request.headers.items()]
    if web.get("requires_proxy_auth"):
        _check_proxy_auth(user_id)
        headers = [[k, v] for k, v in headers if k.lower() != "authorization"]
    limit = svc.settings["max_payload_size"]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"the request body is {request.content_length:,} bytes, over {limit:,}")
    body = request.get_data(cache=False)
    if len(body) > limit:
        raise PayloadTooLargeError(f"the request body is over {limit:,} bytes")
    root = f"/web/{user_name}/{app_name}/{tag}"
    envelope = {
        "method": request.method,
        "root_path": root,
        "path": "/" + rest if rest else ("/" if request.path.endswith("/") else ""),
        "query": request.query_string.decode("latin-1"),
        "headers": headers,
        "body": body,
        "client": request.remote_addr or "",
        "host": request.host,
        "scheme": request.scheme,
    }
    payload = pickle.dumps(((envelope,), {}), protocol=5)
    if len(payload) > svc.settings["inline_payload_size"]:
        payload = protocol.blob_ref(svc.payloads.put_blob_bytes(user_id, payload))
    call_id = submit_call(
        svc.db,
        svc.pending,
        user_id=user_id,
        function_id=record.id,
        payloads=[payload],
        ttl=svc.settings["result_ttl"],
        sender=svc.sender if svc.settings["direct_dispatch"] else None,  # the API's shortcut, as for calls
    ).call_id
    deadline = time.monotonic() + float(record.options.get("timeout", 300)) + START_WAIT_SECONDS
    parts = _items(call_id, deadline)
    head = next(parts, None)
    if not isinstance(head, dict) or "status" not in head:
        return _error(500, "the endpoint failed before it answered; see `minimodal app logs`")
    response_headers = [(k, v) for k, v in head.get("headers", []) if k.lower() not in _HOP_BY_HOP]
    return Response(_body(parts), status=head["status"], headers=response_headers)


def _body(parts: Iterator[Any]) -> Iterator[bytes]:
    for part in parts:
        if isinstance(part, bytes | bytearray):
            yield bytes(part)


def _error(status: int, message: str) -> Response:
    kind = "RemoteError" if status == 500 else "FunctionTimeoutError"
    return Response(
        f'{{"error": {{"type": "{kind}", "message": "{message}"}}}}', status=status, mimetype="application/json"
    )


def _items(call_id: str, deadline: float) -> Iterator[Any]:
    """The call's generator items in order, until its input ends (or fails, or the deadline passes)."""
    svc = services()
    cursors = {keyspace.items_key(call_id): "0-0", keyspace.outputs_key(call_id): "0-0"}
    while time.monotonic() < deadline:
        block = int(min(5.0, max(0.05, deadline - time.monotonic())) * 1000)
        for key, entry_id, fields in svc.payloads.read_streams(dict(cursors), block):
            cursors[key] = entry_id
            if key == keyspace.outputs_key(call_id):
                return  # the input ended: its items were all read before (they precede the output)
            if fields.get(protocol.ITEM_DONE.encode()):
                return
            data = fields.get(protocol.OUT_DATA.encode())
            blob = fields.get(protocol.OUT_BLOB.encode())
            if blob is not None:
                data = svc.payloads.get_blob(blob.decode())
            if data is not None:
                yield _plain(data)
