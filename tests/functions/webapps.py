"""Web endpoints the tests deploy: FastAPI routes, a Flask app, a FastAPI app, a crash, a private one."""

from __future__ import annotations

from typing import Any

import minimodal

app = minimodal.App("tests-web")


@app.function()
@minimodal.fastapi_endpoint()
def greet(name: str = "world", times: int = 1) -> dict[str, Any]:
    return {"greeting": " ".join([f"hello {name}"] * times)}


@app.function()
@minimodal.web_endpoint(method="POST")
def total(item: dict) -> dict[str, Any]:
    return {"total": sum(item["values"]), "count": len(item["values"])}


@app.cls()
class Greeter:
    """Its only method is a web endpoint, without @method(): served all the same, as in Modal."""

    @minimodal.enter()
    def load(self) -> None:
        self.word = "hi"

    @minimodal.fastapi_endpoint()
    def hello(self, name: str = "you") -> dict[str, str]:
        return {"said": f"{self.word} {name}"}

    @minimodal.asgi_app()
    def words(self) -> Any:
        from fastapi import FastAPI

        web = FastAPI()
        web.get("/{n}")(lambda n: {"words": [self.word] * int(n)})
        return web


@app.function()
@minimodal.wsgi_app()
def site() -> Any:
    from flask import Flask, Response, jsonify, request

    web = Flask("site")

    @web.get("/")
    def index() -> Any:
        return f"index of {request.headers.get('X-Who', 'nobody')}"

    @web.post("/items/<int:item_id>")
    def create(item_id: int) -> Any:
        return jsonify(id=item_id, body=request.get_json(), q=request.args.get("q")), 201

    @web.get("/lines")
    def lines() -> Any:
        return Response((f"line {i}\n" for i in range(3)), mimetype="text/plain")

    return web


@app.function()
@minimodal.asgi_app()
def api() -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse

    web = FastAPI()

    @web.get("/square/{x}")
    def square(x: int) -> dict[str, int]:
        return {"square": x * x}

    @web.get("/missing")
    def missing() -> None:
        raise HTTPException(status_code=404, detail="no such thing")

    @web.get("/count")
    def count() -> StreamingResponse:
        return StreamingResponse((f"{i}\n" for i in range(5)), media_type="text/plain", headers={"X-Kind": "stream"})

    return web


@app.function()
@minimodal.fastapi_endpoint()
def crash() -> None:
    raise RuntimeError("secret detail that must not leak")


@app.function()
@minimodal.wsgi_app()
def broken() -> Any:
    def wsgi(environ: Any, start_response: Any) -> Any:
        raise ValueError("secret wsgi detail")

    return wsgi


@app.function()
@minimodal.fastapi_endpoint(requires_proxy_auth=True)
def private() -> dict[str, str]:
    return {"secret": "ok"}
