"""A class and web endpoints that run in containers: standard library only (the image has no Flask)."""

from __future__ import annotations

import json
import os
from typing import Any

import minimodal

app = minimodal.App("tests-services", image=minimodal.Image.debian_slim())

LOADS = 0


@app.cls(max_containers=1, scaledown_window=60)
class Loader:
    scale: int = minimodal.parameter(default=1)

    @minimodal.enter()
    def load(self) -> None:
        global LOADS
        LOADS += 1

    @minimodal.method()
    def predict(self, x: int) -> tuple[int, int, str, bool]:
        return x * self.scale, LOADS, os.uname().nodename, os.path.exists("/.dockerenv")


@app.function()
@minimodal.wsgi_app()
def plain_wsgi() -> Any:
    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = json.dumps(
            {"path": environ["PATH_INFO"], "query": environ["QUERY_STRING"], "docker": os.path.exists("/.dockerenv")}
        ).encode()
        start_response("202 Accepted", [("Content-Type", "application/json")])
        return [body]

    return wsgi


@app.function()
@minimodal.asgi_app()
def plain_asgi() -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"got " + message["body"], "more_body": True})
        await send({"type": "http.response.body", "body": b" in a container", "more_body": False})

    return asgi
