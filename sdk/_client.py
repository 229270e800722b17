"""The HTTP client the SDK uses to talk to the MiniModal API."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import config
from .exception import AuthError, RateLimitError, ServiceError, from_response
from .protocol import b64, unb64

if TYPE_CHECKING:
    import requests

_local = threading.local()
RECONNECT_SECONDS = 60  # how long a repeatable request keeps trying to reach the API
RATE_LIMIT_WAIT_SECONDS = 60  # how long a request refused by the rate limit (429) keeps waiting to be let in


class Client:
    """One user's connection to one MiniModal server. Safe to share across threads."""

    websocket = True  # whether CallEvents may open a WebSocket (a container's channel cannot)

    def __init__(self, server_url: str, token: str | None, *, headers: dict[str, str] | None = None) -> None:
        self.server_url = server_url.rstrip("/")
        self.token = token
        self.headers = dict(headers or {})

    @classmethod
    def from_config(cls) -> Client:
        """The user's client; inside a function, one whose requests go through the worker (the same API)."""
        if sys.modules.get(CHANNEL_MODULE) is not None:
            return ChannelClient()
        return cls(config.get("server_url"), config.get("token"))

    def _session(self) -> requests.Session:
        import requests  # here, not at import: minimodal imports in a container that has no requests

        session = getattr(_local, "session", None)
        if session is None:
            session = _local.session = requests.Session()
        return session

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float = 60,
        stream: bool = False,
        raw: bool = False,
        reconnect: bool = False,
    ) -> Any:
        """Send one request; a JSON error body becomes the matching ``minimodal.exception`` error.

        With ``reconnect`` (for requests that are safe to repeat), a server that cannot be reached is
        tried again for up to ``RECONNECT_SECONDS``: an API restart does not fail the caller.
        """
        delay, deadline = 0.1, time.monotonic() + RECONNECT_SECONDS
        rate_deadline = time.monotonic() + RATE_LIMIT_WAIT_SECONDS
        while True:
            try:
                return self._request_once(
                    method, path, json=json, data=data, params=params, timeout=timeout, stream=stream, raw=raw
                )
            except ServiceError as exc:
                if not (reconnect and exc.__cause__ is not None and time.monotonic() < deadline):
                    raise
            except RateLimitError as exc:
                # Refused before anything was stored: safe to send again once the server says so.
                wait = exc.retry_after or 1.0
                if time.monotonic() + wait > rate_deadline:
                    raise
                time.sleep(wait)
                continue
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _request_once(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        data: Any,
        params: dict[str, Any] | None,
        timeout: float,
        stream: bool,
        raw: bool,
    ) -> Any:
        import requests

        if not self.token and path != "/health":
            raise AuthError("no MiniModal token: run `minimodal up` (writes a profile) or set MINIMODAL_TOKEN")
        headers = {**self.headers, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        url = self.server_url + path
        try:
            response = self._session().request(
                method, url, json=json, data=data, params=params, headers=headers, timeout=timeout, stream=stream
            )
        except requests.ConnectionError as exc:
            raise ServiceError(
                f"cannot reach the MiniModal API at {self.server_url}; is it running? try `minimodal up`"
            ) from exc
        except requests.Timeout as exc:
            raise ServiceError(f"the MiniModal API at {self.server_url} did not answer within {timeout} s") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message, error_type = error["message"], error.get("type")
            except (ValueError, KeyError, TypeError):
                message, error_type = f"HTTP {response.status_code}: {response.text[:500]}", None
            error = from_response(response.status_code, error_type, message)
            if isinstance(error, RateLimitError):
                with contextlib.suppress(ValueError):
                    error.retry_after = float(response.headers.get("Retry-After", ""))
            raise error
        if raw or stream:
            return response
        return response.json() if response.content else None


CHANNEL_MODULE = "_minimodal_channel"  # registered in sys.modules by the runner (minimodal._runner)


class _Raw:
    """What a raw request answers through the channel: the body, as ``requests.Response.content``."""

    def __init__(self, content: bytes) -> None:
        self.content = content


class ChannelClient(Client):
    """The client inside a function: each request goes to the worker through the runner's stdio.

    The worker sends it on to the API with a token scoped to the call's user and the running call as its
    parent (``mm_app/tasks/forward.py``); so the whole SDK works in a container with no network and no
    credential. Events are long-polled (a WebSocket needs a socket of its own).
    """

    websocket = False

    def __init__(self) -> None:
        super().__init__("channel://worker", None)

    def _request_once(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        data: Any,
        params: dict[str, Any] | None,
        timeout: float,
        stream: bool,
        raw: bool,
    ) -> Any:
        channel = sys.modules[CHANNEL_MODULE]
        request: dict[str, Any] = {"kind": "http", "method": method, "path": path, "timeout": timeout}
        if json is not None:
            request["json"] = json
        if params:
            request["params"] = params
        if data is not None:
            request["data"] = b64(data if isinstance(data, bytes) else bytes(data))
        if raw or stream:
            request["raw"] = True
        answer = channel.request(request)
        error = answer.get("error")
        if error:
            raise from_response(500, error.get("type"), error.get("message", "the request failed"))
        if raw or stream:
            return _Raw(unb64(answer.get("raw", "")))
        return answer.get("json")
