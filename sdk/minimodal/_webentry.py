"""What a web endpoint becomes in its container: a generator of the HTTP response for one request.

Standard library only (FastAPI is imported in the container, for ``fastapi_endpoint``), and pickled
by value like ``_clsentry``. The API sends one request envelope as the call's only argument::

    {"method", "root_path", "path", "query", "headers": [[name, value], ...], "body": bytes, "client"}

and reads the call's generator items: first ``{"status": int, "headers": [[name, value], ...]}``,
then the body as ``bytes`` chunks. A WSGI app is driven in-process; an ASGI app (and a
``fastapi_endpoint``, wrapped in a FastAPI app) on this object's own event loop. No server runs in
the container. A handler that raises answers 500 with a plain body; the traceback goes to stderr,
which is the call's and the app's logs, never to the HTTP caller.
"""

from __future__ import annotations

import asyncio
import io
import sys
import traceback
from collections.abc import Iterator
from typing import Any

WEB_ATTR = "_minimodal_web"  # set by the decorators: {"kind", "method", "docs", "requires_proxy_auth"}
_ERROR_BODY = b"Internal Server Error"


def _head(status: int, headers: list[list[str]]) -> dict[str, Any]:
    return {"status": int(status), "headers": [[str(k), str(v)] for k, v in headers]}


def _error_response() -> Iterator[Any]:
    yield _head(500, [["content-type", "text/plain; charset=utf-8"]])
    yield _ERROR_BODY


class WebEntry:
    """The web function: builds the user's app once per container, then serves one request per call."""

    def __init__(self, user_fn: Any, web: dict[str, Any]) -> None:
        self.user_fn = user_fn
        self.web = web
        self.__name__ = getattr(user_fn, "__name__", "web")
        self.__qualname__ = getattr(user_fn, "__qualname__", self.__name__)
        self.__module__ = getattr(user_fn, "__module__", __name__)
        self.__doc__ = getattr(user_fn, "__doc__", None)
        self._app: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_app": None, "_loop": None}

    def __call__(self, request: dict[str, Any]) -> Iterator[Any]:
        started = False
        try:
            for part in self._serve(request):
                started = True
                yield part
        except Exception:
            traceback.print_exc(file=sys.stderr)  # the app's logs, not the caller
            if not started:
                yield from _error_response()

    # ---- building the app ----

    def _build(self) -> Any:
        if self._app is None:
            kind = self.web["kind"]
            if kind == "fastapi":
                from fastapi import FastAPI

                docs = bool(self.web.get("docs"))
                api = FastAPI(
                    docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None
                )
                api.add_api_route("/", self.user_fn, methods=[self.web.get("method", "GET").upper()])
                self._app = api
            else:
                self._app = self.user_fn()  # wsgi_app / asgi_app: the function returns the app
        return self._app

    def _serve(self, request: dict[str, Any]) -> Iterator[Any]:
        app = self._build()
        if self.web["kind"] == "wsgi":
            return self._wsgi(app, request)
        return self._asgi(app, request)

    # ---- WSGI ----

    def _wsgi(self, app: Any, request: dict[str, Any]) -> Iterator[Any]:
        body = request.get("body") or b""
        host, _, port = (request.get("host") or "localhost:80").partition(":")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request["method"],
            "SCRIPT_NAME": request.get("root_path", ""),
            "PATH_INFO": request.get("path") or "/",
            "QUERY_STRING": request.get("query", ""),
            "SERVER_NAME": host,
            "SERVER_PORT": port or "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": request.get("client", ""),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": request.get("scheme", "http"),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.get("headers", []):
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key != "CONTENT_LENGTH":
                environ["HTTP_" + key] = f"{environ['HTTP_' + key]},{value}" if "HTTP_" + key in environ else value
        head: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            head.update(_head(int(status.split()[0]), [list(h) for h in headers]))
            return lambda data: None  # the legacy write() callable: unused by modern apps

        result = app(environ, start_response)
        try:
            chunks = iter(result)
            first = next(chunks, None)
            yield head
            if first:
                yield bytes(first)
            for chunk in chunks:
                if chunk:
                    yield bytes(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    # ---- ASGI ----

    def _loop_for(self, app: Any) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._lifespan(app))
        return self._loop

    async def _lifespan(self, app: Any) -> None:
        """Start the app's lifespan (FastAPI startup hooks) once; an app without one is fine."""
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        started = asyncio.get_running_loop().create_future()
        await inbox.put({"type": "lifespan.startup"})

        async def send(message: dict[str, Any]) -> None:
            if not started.done() and message["type"].startswith("lifespan.startup"):
                started.set_result(message)

        async def run() -> None:
            try:
                await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
            except Exception:  # noqa: BLE001 - an app without lifespan support
                pass
            if not started.done():
                started.set_result({"type": "lifespan.unsupported"})

        self._lifespan_task = asyncio.get_running_loop().create_task(run())
        message = await started
        if message["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the ASGI app failed to start: {message.get('message', '')}")

    def _asgi(self, app: Any, request: dict[str, Any]) -> Iterator[Any]:
        loop = self._loop_for(app)
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        finished = asyncio.Event()
        body_sent = False
        host, _, port = (request.get("host") or "localhost:80").partition(":")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request["method"],
            "scheme": request.get("scheme", "http"),
            "root_path": request.get("root_path", ""),
            "path": request.get("root_path", "") + (request.get("path") or "/"),
            "raw_path": (request.get("root_path", "") + (request.get("path") or "/")).encode(),
            "query_string": request.get("query", "").encode(),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.get("headers", [])],
            "client": (request.get("client") or "", 0),
            "server": (host, int(port or 80)),
            "state": {},
        }

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.get("body") or b"", "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await outbox.put(message)

        task = loop.create_task(app(scope, receive, send))

        def next_message() -> dict[str, Any] | None:
            async def wait() -> dict[str, Any] | None:
                getter = asyncio.ensure_future(outbox.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    return getter.result()
                getter.cancel()
                if not outbox.empty():
                    return outbox.get_nowait()
                task.result()  # re-raise what the app raised
                return None

            return loop.run_until_complete(wait())

        try:
            message = next_message()
            if message is None or message["type"] != "http.response.start":
                raise RuntimeError("the ASGI app ended without starting a response")
            yield _head(
                message["status"], [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]
            )
            while True:
                message = next_message()
                if message is None:
                    break
                if message["type"] == "http.response.body":
                    if message.get("body"):
                        yield bytes(message["body"])
                    if not message.get("more_body", False):
                        break
        finally:
            finished.set()
            if not task.done():
                loop.run_until_complete(asyncio.wait({task}, timeout=5))
