"""Modal's ``modal.partial_function`` module: the decorators that mark functions and methods."""

from .cls import enter, exit, method
from .concurrency import batched, concurrent
from .web import asgi_app, fastapi_endpoint, web_endpoint, wsgi_app

__all__ = [
    "asgi_app",
    "batched",
    "concurrent",
    "enter",
    "exit",
    "fastapi_endpoint",
    "method",
    "web_endpoint",
    "wsgi_app",
]
