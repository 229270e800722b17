"""The SDK's WebSocket client: websocket-client behind the four calls the SDK makes.

The SDK receives pushed call events over a WebSocket (``_stream.py``) and runs terminals over one
(``_cli_containers.py``). The protocol is websocket-client's (RFC 6455: masking, fragments, pings,
close); this module keeps what the SDK needs of it: :meth:`WebSocket.connect` with the API's ``http``
or ``https`` URL, text messages, a ``recv`` with a timeout that raises ``TimeoutError``, and a refused
handshake as :class:`HandshakeError` with the reply's status and body.

A proxy comes from the environment, as for the SDK's HTTP requests (requests reads the same variables):
``HTTPS_PROXY`` for ``https`` URLs, ``HTTP_PROXY`` for ``http`` ones (or their lower-case names),
except for the hosts ``NO_PROXY`` names; the connection goes through it with ``CONNECT``.

websocket-client is imported when a socket opens: minimodal imports in a container that lacks it (a
function's code talks to the platform through its runner, never over a WebSocket).
"""

from __future__ import annotations

from typing import Any


class HandshakeError(Exception):
    """The server did not switch protocols; ``status`` and ``body`` say why."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"WebSocket handshake refused with HTTP {status}")
        self.status, self.body = status, body


class WebSocket:
    """One open WebSocket; ``send`` may be called from another thread than ``recv``."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws  # websocket.WebSocket
        self.closed = False

    @classmethod
    def connect(cls, url: str, headers: dict[str, str], timeout: float = 10) -> WebSocket:
        """Open ``url`` (http, https, ws or wss) and complete the handshake, through a proxy if one is set.

        Raises:
            HandshakeError: the server answered with another status than 101.
            TimeoutError: no answer within ``timeout`` seconds.
            OSError: the server (or the proxy) cannot be reached.
        """
        import websocket

        scheme, sep, rest = url.partition("://")
        target = {"http": "ws", "https": "wss"}.get(scheme, scheme) + sep + rest
        try:
            # No Origin header: the API is no browser's site, and the old client sent none.
            ws = websocket.create_connection(target, timeout=timeout, header=headers, suppress_origin=True)
        except websocket.WebSocketBadStatusException as exc:
            raise HandshakeError(exc.status_code, exc.resp_body or b"") from None
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError(f"no WebSocket handshake with {url} within {timeout} s") from exc
        except websocket.WebSocketException as exc:  # a proxy that refused CONNECT, a malformed reply, ...
            raise ConnectionError(f"cannot open a WebSocket to {url}: {exc}") from exc
        return cls(ws)

    def send(self, text: str) -> None:
        import websocket

        try:
            self._ws.send(text)
        except websocket.WebSocketException as exc:
            raise ConnectionError(f"the WebSocket connection was closed: {exc}") from exc

    def recv(self, timeout: float | None = None) -> str | None:
        """The next text (or binary, decoded) message; None when the server closed the connection.

        Raises ``TimeoutError`` when nothing arrives within ``timeout``, ``ConnectionError`` when the
        connection broke without a close. Pings are answered on the way.
        """
        import websocket

        self._ws.settimeout(timeout)
        try:
            opcode, data = self._ws.recv_data()
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError("no WebSocket message in time") from exc
        except websocket.WebSocketException as exc:
            raise ConnectionError(f"the WebSocket connection was closed: {exc}") from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close()
            return None
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._ws.close(timeout=0)  # a close frame, without waiting for the server's
        self._ws.shutdown()  # the socket, also when the server closed first (then close() sends nothing)
