"""The SDK's WebSocket (sdk/_websocket.py): through the proxy HTTP(S)_PROXY names, and past it for NO_PROXY."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from minimodal._client import Client
from minimodal._stream import CallEvents
from minimodal._websocket import HandshakeError, WebSocket
from tests.conftest import Stack
from tests.functions import basic

_PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")


class ConnectProxy:
    """A real HTTP proxy on a free port that takes ``CONNECT host:port`` and tunnels the bytes both ways.

    ``tunnels`` lists the targets it connected to, in order. Any other method gets a 405.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.tunnels: list[str] = []
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="test-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        request, _, early = head.partition(b"\r\n\r\n")
        method, target, _ = request.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=10)
        upstream.settimeout(None)
        self._sockets.append(upstream)
        self.tunnels.append(target)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if early:
            upstream.sendall(early)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        for sock in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=10)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectProxy]:
    """A CONNECT proxy, with no proxy variable left from the environment the tests run in."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    server = ConnectProxy()
    yield server
    server.close()


def _items(events: CallEvents, count: int) -> list[int]:
    items: list[int] = []
    while len(items) < count:
        items += [e["n"] for e in events.next(timeout=30) if not e.get("done")]
    return items


def test_call_events_reach_the_api_through_the_proxy_that_http_proxy_names(
    stack: Stack, user: str, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    with basic.app.run():
        fc = basic.countdown.spawn(3)
        assert list(fc.stream()) == [0, 1, 2]
    # Given a proxy in the environment (set only now: this process makes no other request meanwhile)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    events = CallEvents(Client.from_config(), fc.object_id, ("items",))
    try:
        # then the WebSocket goes through it, and brings every item
        assert _items(events, 3) == [0, 1, 2]
        assert events.transport == "websocket"
    finally:
        events.close()
    assert proxy.tunnels == [stack.url.split("://", 1)[1]]


def test_a_host_in_no_proxy_is_reached_directly_and_lower_case_names_count_too(
    stack: Stack, user: str, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    with basic.app.run():
        fc = basic.countdown.spawn(2)
        assert list(fc.stream()) == [0, 1]
    host = stack.url.split("://", 1)[1].rsplit(":", 1)[0]
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("NO_PROXY", f"example.invalid,{host}")
    events = CallEvents(Client.from_config(), fc.object_id, ("items",))
    try:
        assert _items(events, 2) == [0, 1]
        assert events.transport == "websocket"
    finally:
        events.close()
    assert proxy.tunnels == []  # NO_PROXY named the API's host
    monkeypatch.delenv("NO_PROXY")
    ws = WebSocket.connect(f"{stack.url}/v1/calls/{fc.object_id}/ws", {"Authorization": f"Bearer {user}"})
    ws.close()
    assert len(proxy.tunnels) == 1  # http_proxy, in lower case, is taken as HTTP_PROXY is


def test_a_refused_handshake_through_the_proxy_keeps_its_status_and_error_body(
    stack: Stack, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with pytest.raises(HandshakeError) as refused:
        WebSocket.connect(f"{stack.url}/v1/calls/fc-nothing/ws", {"Authorization": "Bearer mm_wrong"})
    assert refused.value.status == 401
    assert b'"error"' in refused.value.body
    assert len(proxy.tunnels) == 1


def test_an_https_url_goes_through_the_proxy_that_https_proxy_names(
    stack: Stack, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # for http URLs only: not taken here
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    target = stack.url.split("://", 1)[1]
    with pytest.raises(OSError):  # the test API speaks no TLS: the handshake through the tunnel fails
        WebSocket.connect(f"https://{target}/v1/calls/fc-nothing/ws", {}, timeout=10)
    assert proxy.tunnels == [target]
