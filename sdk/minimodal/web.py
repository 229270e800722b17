"""Web endpoints: ``@minimodal.fastapi_endpoint()``, ``@minimodal.wsgi_app()``, ``@minimodal.asgi_app()``.

Example::

    @app.function()
    @minimodal.fastapi_endpoint(method="POST")
    def echo(item: dict) -> dict:
        return {"got": item}

    @app.function(image=minimodal.Image.debian_slim().pip_install("flask"))
    @minimodal.wsgi_app()
    def site():
        from flask import Flask
        web = Flask(__name__)
        ...
        return web

Deployed, each gets a stable URL on the API server, ``/web/{user}/{app}/{function}/...``, printed by
``minimodal deploy`` and returned by ``fn.get_web_url()``. Public unless ``requires_proxy_auth=True``
(then the caller sends ``Authorization: Bearer <the app owner's token>``). The request becomes one
ordinary call; the response streams back as the call's generator items (see ``_webentry``).
A ``fastapi_endpoint`` needs FastAPI where it runs (``pip_install("fastapi")`` in its image).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import cloudpickle

from . import _webentry
from ._webentry import WEB_ATTR, WebEntry
from .exception import InvalidError, UnsupportedOptionError

F = TypeVar("F", bound=Callable[..., Any])
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

cloudpickle.register_pickle_by_value(_webentry)  # containers have cloudpickle, not minimodal


def _mark(kind: str, requires_proxy_auth: bool, custom_domains: Any, **extra: Any) -> Callable[[F], F]:
    if custom_domains:
        raise UnsupportedOptionError("custom_domains is not implemented in MiniModal: use the /web/... URL")

    def decorate(fn: F) -> F:
        if hasattr(fn, "_tag") and hasattr(fn, "object_id"):
            raise InvalidError(f"put @minimodal.{kind}... below @app.function(), not above it")
        setattr(fn, WEB_ATTR, {"kind": kind, "requires_proxy_auth": bool(requires_proxy_auth), **extra})
        return fn

    return decorate


def fastapi_endpoint(
    _warn_parentheses_missing: Any = None,
    *,
    method: str = "GET",
    label: str | None = None,
    docs: bool = False,
    custom_domains: Any = None,
    requires_proxy_auth: bool = False,
) -> Callable[[F], F]:
    """Serve the function as one FastAPI route: query parameters and JSON bodies become its arguments."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @minimodal.fastapi_endpoint() with parentheses")
    if method.upper() not in _METHODS:
        raise InvalidError(f"method={method!r}: give one of {sorted(_METHODS)}")
    return _mark("fastapi", requires_proxy_auth, custom_domains, method=method.upper(), docs=bool(docs))


web_endpoint = fastapi_endpoint  # Modal's older name


def wsgi_app(
    _warn_parentheses_missing: Any = None,
    *,
    label: str | None = None,
    custom_domains: Any = None,
    requires_proxy_auth: bool = False,
) -> Callable[[F], F]:
    """Serve the WSGI app (Flask, Django) that the function returns."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @minimodal.wsgi_app() with parentheses")
    return _mark("wsgi", requires_proxy_auth, custom_domains)


def asgi_app(
    _warn_parentheses_missing: Any = None,
    *,
    label: str | None = None,
    custom_domains: Any = None,
    requires_proxy_auth: bool = False,
) -> Callable[[F], F]:
    """Serve the ASGI app (FastAPI, Starlette) that the function returns."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @minimodal.asgi_app() with parentheses")
    return _mark("asgi", requires_proxy_auth, custom_domains)


def web_entry(raw_f: Any) -> tuple[Any, dict[str, Any]] | None:
    """``(the callable to ship, its web spec)`` for a function marked by a decorator here, else None."""
    if isinstance(raw_f, WebEntry):  # a class's web method, wrapped already (sdk/minimodal/cls.py)
        return raw_f, dict(raw_f.web)
    web = getattr(raw_f, WEB_ATTR, None)
    if web is None:
        return None
    return WebEntry(raw_f, web), dict(web)
