"""``/v1/sandboxes/{id}/tunnels/{port}/...``: HTTP to a sandbox's port, through the API (its encrypted tunnels).

A sandbox created with ``encrypted_ports=`` or ``unencrypted_ports=`` has each port published by Docker
on its worker's host, at ``MINIMODAL_WORKER_ADDRESS`` (mm_app/tasks/sandbox.py records which host port
in the sandbox's live state). This route forwards a request to that host port and streams the answer
back, so the tunnel's URL is the API's own: ``https`` when the API is served over TLS, and only the
sandbox's owner (bearer token) reaches it; anyone else gets 404, as on every sandbox route. Plain HTTP
only (no WebSocket upgrade); a raw TCP client uses an unencrypted port's ``tcp_socket`` instead.
"""

from __future__ import annotations

from typing import Any

import requests
from flask import Blueprint, Response, request, stream_with_context

from minimodal.exception import NotFoundError, ServiceError
from minimodal.protocol import SandboxState

from .. import sandboxes
from .auth import authenticate
from .sandboxes import _record
from .schema import Doc
from .services import services

bp = Blueprint("tunnels", __name__, url_prefix="/v1/sandboxes")
bp.before_request(authenticate)
doc = Doc("sandboxes")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CHUNK = 64 * 1024  # bytes relayed at a time, each way
CONNECT_TIMEOUT = 10.0  # seconds to reach the sandbox's port
READ_TIMEOUT = 300.0  # seconds the sandbox's server may go silent mid-answer
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the relay sets itself; the token never reaches the sandbox.
_DROP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
}


@bp.route("/<sandbox_id>/tunnels/<int:port>/", defaults={"rest": ""}, methods=METHODS)
@bp.route("/<sandbox_id>/tunnels/<int:port>/<path:rest>", methods=METHODS)
@doc(
    "HTTP to a port of a running sandbox (its encrypted tunnel), relayed as the sandbox answers",
    reply=Any,
    media="*/*",
    errors=(404, 503),
    params={"port": "the container's port", "rest": "the path on the sandbox's server"},
)
def proxy(sandbox_id: str, port: int, rest: str):  # type: ignore[no-untyped-def]
    record = _record(sandbox_id)
    live = sandboxes.live_state(services().redis, sandbox_id)
    if SandboxState(live.get("state") or record.state) != SandboxState.RUNNING:
        raise NotFoundError(f"sandbox {sandbox_id} is not running, so its port {port} has no tunnel")
    tunnel = sandboxes.tunnels(live).get(port)
    if tunnel is None:
        raise NotFoundError(f"sandbox {sandbox_id} has no tunnel on port {port} (give it in encrypted_ports=)")
    target = f"http://{tunnel['host']}:{tunnel['port']}/{rest}"
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    headers["X-Forwarded-Proto"] = request.scheme
    try:
        upstream = requests.request(
            request.method,
            target,
            headers=headers,
            data=request.get_data(),
            stream=True,
            allow_redirects=False,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        )
    except requests.RequestException as exc:
        raise ServiceError(f"nothing answers on port {port} of sandbox {sandbox_id} ({type(exc).__name__})") from exc

    def relay() -> Any:
        try:
            yield from upstream.raw.stream(CHUNK, decode_content=False)  # as sent: gzip stays gzip
        finally:
            upstream.close()

    kept = [(k, v) for k, v in upstream.raw.headers.items() if k.lower() not in _DROP - {"content-length"}]
    return Response(stream_with_context(relay()), status=upstream.status_code, headers=kept)
