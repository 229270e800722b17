"""The API's HTTP server: gunicorn, several processes of threaded (``gthread``) workers.

Why gunicorn's ``gthread`` worker: the API is plain blocking WSGI (Flask) whose slow requests wait on
Redis (output long-polls, ``XREAD BLOCK``) and whose WebSockets (flask-sock) hold their connection for
as long as the client watches; flask-sock supports exactly two synchronous servers, Werkzeug's and
gunicorn with ``gthread``, and a thread per open request is what both need. Processes use the cores;
threads cover the waiting. No process keeps state another needs: every limit, cache and wake-up the
API uses is in Redis or the database (see docs/ARCHITECTURE.md "The API server").

Signals (gunicorn's): SIGTERM stops gracefully (no new connections; requests in flight finish within
``DEFAULT_API_GRACEFUL_SECONDS``), SIGHUP replaces the worker processes gracefully with new ones that
import the code and read the settings afresh, SIGINT/SIGQUIT stop at once.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import glogging, util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from minimodal import config, defaults

# What the server itself refuses before Flask sees the request (Werkzeug's development server had
# the same two header limits): a longer request line answers 414, a longer header line or more
# headers 431, each in the API's JSON error shape (JSONErrorWorker).
LIMIT_REQUEST_LINE = 8190  # gunicorn's maximum
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 64 * 1024  # a 60 kB bearer token still reaches the API (and answers 401)
KEEPALIVE_SECONDS = 75  # idle keep-alive connections stay open longer than the SDK's session reuses them


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error replies (``util.write_error``) in the API's ``{"error": {...}}`` shape."""
    kind = "InvalidError" if status_int < 500 else "ServiceError"
    body = json.dumps({"error": {"type": kind, "message": f"{mesg or reason} (HTTP {status_int})"}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    util.write_nonblock(sock, head + body)


class JSONErrorWorker(ThreadWorker):
    """gunicorn's ``gthread`` worker whose own error replies (bad request line, headers too large) are JSON.

    gunicorn writes them with ``gunicorn.util.write_error`` (HTML) and has no setting for their format,
    so each worker process points that one function at :func:`_write_json_error` as it starts.
    """

    def init_process(self) -> None:
        util.write_error = _write_json_error
        super().init_process()


class ProcessLogger(glogging.Logger):
    """gunicorn's own log lines (start, stop, worker exits) through the process's logging: text or JSON lines.

    ``python -m mm_app api`` configures the root logger (mm_app/observability.py) before gunicorn starts,
    and the worker processes inherit it; gunicorn's loggers hand their records up to it.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                if getattr(handler, "_gunicorn", False):
                    log.removeHandler(handler)
            log.propagate = True


def _create_tables(server: Any) -> None:
    """Create the database's tables once, in the master, before the workers (each runs create_app) start."""
    from .database import Database

    db = Database(config.database_url())
    try:
        db.create_all()
    finally:
        db.dispose()


class APIServer(BaseApplication):
    """``python -m mm_app api``: the Flask app under gunicorn, configured from MiniModal's settings."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": [f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"],
            "workers": max(1, config.get("api_processes")),
            "worker_class": f"{__name__}.JSONErrorWorker",
            "threads": max(1, config.get("api_threads")),
            "keepalive": KEEPALIVE_SECONDS,
            "graceful_timeout": defaults.DEFAULT_API_GRACEFUL_SECONDS,
            "limit_request_line": LIMIT_REQUEST_LINE,
            "limit_request_fields": LIMIT_REQUEST_FIELDS,
            "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
            "proc_name": "minimodal-api",
            # One line per request, as Werkzeug's server wrote; with JSON lines the app writes its own
            # (minimodal.api.access, with the call's ids: mm_app/api/observe.py).
            "accesslog": None if config.get("log_json") else "-",
            "errorlog": "-",
            "logger_class": f"{__name__}.ProcessLogger",
            "loglevel": str(config.get("log_level")).lower(),
            "on_starting": _create_tables,
        }
        # gunicorn >= 24's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl) that every
        # API on the machine would share; supervisord and signals are how MiniModal controls its API.
        options["control_socket_disable"] = True
        for key, value in options.items():
            if key in self.cfg.settings:  # a setting this gunicorn does not have (older): its default is fine
                self.cfg.set(key, value)

    def load(self) -> Any:
        from .api import create_app

        return create_app()


def serve(host: str, port: int) -> None:
    """Run the API until SIGTERM (graceful) or SIGINT; the master's pid is this process's."""
    APIServer(host, port).run()
