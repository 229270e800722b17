"""The HTTP client the SDK uses to talk to the MiniModal API."""

from __future__ import annotations

import contextlib
import json as json_module
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from . import config
from ._backoff import Backoff, Retrying, WaitAfter
from .exception import AuthError, Error, RateLimitError, ServiceError, from_response
from .protocol import b64, unb64

if TYPE_CHECKING:
    import requests

_local = threading.local()
_ENVIRONMENT: dict[str, dict[str, Any]] = {}  # server URL -> its proxies and CA bundle (Client._environment)


class Request(NamedTuple):
    """One request to the API, as :meth:`Client.request` sends it (over HTTP, or the runner's channel)."""

    method: str
    path: str
    json: Any
    data: Any
    params: dict[str, Any] | None
    timeout: float
    stream: bool
    raw: bool


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
            # With trust_env, requests reads the whole environment on every request (proxies, CA bundle,
            # netrc): about 0.3 ms of each call. The proxies and CA bundle are read once per server
            # instead (_environment); a netrc entry would only replace the bearer token.
            session.trust_env = False
        return session

    def _environment(self) -> dict[str, Any]:
        """The proxies and CA bundle the environment names for this server, read once."""
        found: dict[str, Any] | None = _ENVIRONMENT.get(self.server_url)
        if found is None:
            import os

            import requests

            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            found = {"proxies": requests.utils.get_environ_proxies(self.server_url), "verify": bundle or True}
            _ENVIRONMENT[self.server_url] = found
        return found

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
        for attempt in Retrying(request_waits(reconnect)):
            with attempt:
                return self._request_once(Request(method, path, json, data, params, timeout, stream, raw))

    def _request_once(self, req: Request) -> Any:
        import requests

        method, path, json, data, params, timeout, stream, raw = req
        if not self.token and path != "/health":
            raise AuthError("no MiniModal token: run `minimodal up` (writes a profile) or set MINIMODAL_TOKEN")
        headers = {**self.headers, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        url = self.server_url + path
        try:
            response = self._session().request(
                method,
                url,
                json=json,
                data=data,
                params=params,
                headers=headers,
                timeout=timeout,
                stream=stream,
                **self._environment(),
            )
        except requests.ConnectionError as exc:
            raise ServiceError(
                f"cannot reach the MiniModal API at {self.server_url}; is it running? try `minimodal up`"
            ) from exc
        except requests.Timeout as exc:
            raise ServiceError(f"the MiniModal API at {self.server_url} did not answer within {timeout} s") from exc
        if response.status_code >= 400:
            if data is not None:
                # An upload refused before its body was read (413, 401, ...): the server may drop that
                # connection at any moment, and a POST that lands on it is not sent again. Start afresh.
                response.close()
                self._session().close()
                _local.session = None
            raise error_for(response.status_code, response.text, response.headers.get("Retry-After"))
        if raw or stream:
            return response
        return response.json() if response.content else None


def request_waits(reconnect: bool) -> WaitAfter:
    """When a request is sent again (:class:`Client` and the ``.aio`` client alike), and after how long.

    A 429 is waited out as the server's ``Retry-After`` says, for up to ``RATE_LIMIT_WAIT_SECONDS``; with
    ``reconnect``, a server that cannot be reached is tried again with growing waits for up to
    ``RECONNECT_SECONDS``. Any other error is the caller's.
    """
    backoff = Backoff(0.1, factor=2.0, most=2.0, seconds=RECONNECT_SECONDS)
    rate_deadline = time.monotonic() + RATE_LIMIT_WAIT_SECONDS

    def wait_after(exc: Exception) -> float | None:
        if isinstance(exc, RateLimitError):
            # Refused before anything was stored: safe to send again once the server says so.
            wait = exc.retry_after or 1.0
            return wait if time.monotonic() + wait <= rate_deadline else None
        if reconnect and isinstance(exc, ServiceError) and exc.__cause__ is not None:
            return backoff.next_wait()
        return None

    return wait_after


def error_for(status: int, body: str, retry_after: str | None) -> Error:
    """The ``minimodal.exception`` error an error reply stands for (its JSON ``error``, else its status)."""
    try:
        error = json_module.loads(body)["error"]
        message, error_type = error["message"], error.get("type")
    except (ValueError, KeyError, TypeError):
        message, error_type = f"HTTP {status}: {body[:500]}", None
    exc = from_response(status, error_type, message)
    if isinstance(exc, RateLimitError):
        with contextlib.suppress(ValueError, TypeError):
            exc.retry_after = float(retry_after or "")
    return exc


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

    def _request_once(self, req: Request) -> Any:
        method, path, json, data, params, timeout, stream, raw = req
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
