"""Deploying an app (``app.deploy()``, ``minimodal deploy FILE``) and finding deployed code by name.

A deploy stores every function's code, image and options as a new version of the named app; the
server makes it the current version atomically. ``Function.from_name`` and ``Cls.from_name`` look up
the current version and only send arguments from then on.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._client import Client
from .exception import InvalidError
from .functions import Function, FunctionOptions

if TYPE_CHECKING:
    from .app import App

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_app_name(name: str | None) -> str:
    if not name or not _NAME.match(name):
        raise InvalidError(
            f"app name {name!r}: a deployed app needs a name of 1-64 letters, digits, '-', '_' or '.' "
            '(minimodal.App("my-app"))'
        )
    return name


def deploy_app(app: App, name: str | None = None) -> App:
    """Store ``app``'s functions as a new version of its name; its functions stay hydrated."""
    name = check_app_name(name or app.name)
    app.name = name
    reply = app._register(Client.from_config(), "/v1/deployments", {})
    app.deployed_version = reply["version"]
    return app


def _missing_local(tag: str) -> Any:
    def local(*args: Any, **kwargs: Any) -> Any:
        raise InvalidError(f"{tag} was looked up by name: its code is on the server, call .remote() instead")

    return local


def lookup_function(app_name: str, tag: str, client: Client | None = None) -> Function[..., Any]:
    """The function ``tag`` of the current version of ``app_name``, ready to call."""
    client = client or Client.from_config()
    reply = client.request("GET", f"/v1/deployments/{quote(app_name, safe='')}/functions/{quote(tag, safe='')}")
    function: Function[..., Any] = Function(None, _missing_local(tag), tag, FunctionOptions())  # type: ignore[arg-type]
    function.object_id = reply["function_id"]
    function._is_generator = bool(reply["spec"].get("generator"))
    function._web_url = reply.get("web_url")
    function._extra_spec = {k: v for k, v in reply["spec"].items() if k != "generator"}
    return function
