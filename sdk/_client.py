"""The HTTP client the SDK uses to talk to the MiniModal API."""

from __future__ import annotations

import threading
from typing import Any

import requests

from . import config
from .exception import AuthError, ServiceError, from_response

_local = threading.local()


class Client:
    """One user's connection to one MiniModal server. Safe to share across threads."""

    def __init__(self, server_url: str, token: str | None) -> None:
        self.server_url = server_url.rstrip("/")
        self.token = token

    @classmethod
    def from_config(cls) -> Client:
        return cls(config.get("server_url"), config.get("token"))

    def _session(self) -> requests.Session:
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
    ) -> Any:
        """Send one request; a JSON error body becomes the matching ``minimodal.exception`` error."""
        if not self.token and path != "/health":
            raise AuthError("no MiniModal token: run `minimodal up` (writes a profile) or set MINIMODAL_TOKEN")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
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
            raise from_response(response.status_code, error_type, message)
        if raw or stream:
            return response
        return response.json() if response.content else None
