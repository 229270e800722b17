"""The SDK's asyncio HTTP client: what ``.aio`` forms send requests with (httpx), one per event loop.

:func:`arequest` is the async twin of :meth:`Client.request`: same errors, same waits on a 429, same
reconnecting for requests that are safe to repeat, but nothing blocks a thread, so an event loop can
hold as many requests in flight as the server takes (the connection pool has no upper bound: 200
consumers blocked in ``await q.get.aio()`` are 200 open requests, not 200 threads). Each event loop
gets its own ``httpx.AsyncClient``, closed when ``asyncio.run`` shuts the loop down.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ._backoff import Retrying
from ._client import Client, error_for, request_waits
from .exception import AuthError, ServiceError

if TYPE_CHECKING:
    import httpx

_KEEPALIVE = 100  # idle connections a loop keeps open for the next requests
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, AsyncIterator[None]]] = (
    weakref.WeakKeyDictionary()
)


async def _http() -> httpx.AsyncClient:
    """This event loop's client, made on first use."""
    loop = asyncio.get_running_loop()
    held = _clients.get(loop)
    if held is None:
        import httpx  # here, not at import: minimodal imports in a container that has no httpx

        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=_KEEPALIVE), trust_env=False
        )
        closer = _close_at_shutdown(loop, client)
        _clients[loop] = held = (client, closer)
        await closer.__anext__()  # a started async generator: asyncio.run's shutdown_asyncgens() closes it
    return held[0]


async def _close_at_shutdown(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        _clients.pop(loop, None)
        await client.aclose()


async def arequest(
    client: Client,
    method: str,
    path: str,
    *,
    json: Any = None,
    data: bytes | None = None,
    params: dict[str, Any] | None = None,
    timeout: float = 60,
    raw: bool = False,
    reconnect: bool = False,
) -> Any:
    """Send one request without blocking the loop; the reply's JSON (``raw``: its bytes).

    Errors are those of :meth:`Client.request`; with ``reconnect`` an unreachable server is tried
    again for up to ``RECONNECT_SECONDS``, and a 429 is waited out as the server says.
    """
    if not client.websocket:  # inside a function: the request goes through the runner's channel, not HTTP
        from ._aio import in_thread

        reply = await in_thread(
            client.request,
            method,
            path,
            json=json,
            data=data,
            params=params,
            timeout=timeout,
            raw=raw,
            reconnect=reconnect,
        )
        return reply.content if raw else reply
    async for attempt in Retrying(request_waits(reconnect)):
        with attempt:
            return await _request_once(client, method, path, json, data, params, timeout, raw)


async def _request_once(
    client: Client,
    method: str,
    path: str,
    json: Any,
    data: bytes | None,
    params: dict[str, Any] | None,
    timeout: float,
    raw: bool,
) -> Any:
    import httpx

    if not client.token and path != "/health":
        raise AuthError("no MiniModal token: run `minimodal up` (writes a profile) or set MINIMODAL_TOKEN")
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    if data is not None:
        headers["Content-Type"] = "application/octet-stream"
    http = await _http()
    try:
        response = await http.request(
            method,
            client.server_url + path,
            json=json,
            content=data,
            params=params,
            headers=headers,
            timeout=httpx.Timeout(timeout),
        )
    except httpx.TimeoutException as exc:
        raise ServiceError(f"the MiniModal API at {client.server_url} did not answer within {timeout} s") from exc
    except httpx.TransportError as exc:
        raise ServiceError(
            f"cannot reach the MiniModal API at {client.server_url}; is it running? try `minimodal up`"
        ) from exc
    if response.status_code >= 400:
        raise error_for(response.status_code, response.text, response.headers.get("Retry-After"))
    if raw:
        return response.content
    return response.json() if response.content else None
