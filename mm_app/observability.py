"""Logs of every control-plane process, as text or as JSON lines that carry the call they are about.

``MINIMODAL_LOG_JSON=1`` turns each log record into one JSON object per line, with the component
(``api``, ``dispatcher``, ``worker``, ...), and the ``call_id``, ``user_id`` and ``function_id`` it
concerns when they are known, so one call can be followed across processes::

    grep fc-3kT9 api.log dispatcher.log worker.log | jq .

Where the ids come from: the API binds them per request (from the URL, the token's user, and the
``call_id`` of the reply, see :mod:`mm_app.api.observe`); the dispatcher logs each ``mm.execute`` it
sends, with the task's ids; the worker binds them for the duration of each task (Celery's
``task_prerun``/``task_postrun``), so Celery's own "succeeded" line and the function's printed output
carry them too. With text logs nothing is bound and nothing extra is logged: the hot path pays nothing.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from mm_app import keyspace

CONTEXT_FIELDS = ("call_id", "user_id", "function_id")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_context: dict[str, contextvars.ContextVar[Any]] = {
    name: contextvars.ContextVar(f"minimodal_{name}", default=None) for name in CONTEXT_FIELDS
}
_sources: list[Callable[[], dict[str, Any]]] = []  # late lookups, e.g. the API's authenticated user
_state = {"json": False, "component": ""}


def bind(**fields: Any) -> None:
    """Set the ids that this thread's (or task's) log records carry; ``None`` clears one."""
    for name, value in fields.items():
        _context[name].set(value)


def clear() -> None:
    bind(**dict.fromkeys(CONTEXT_FIELDS))


def current() -> dict[str, Any]:
    """The ids bound now (only those that are set), completed by the registered sources."""
    fields = {name: var.get() for name, var in _context.items()}
    if _sources and any(value is None for value in fields.values()):
        for source in _sources:
            for name, value in source().items():
                if fields.get(name) is None:
                    fields[name] = value
    return {name: value for name, value in fields.items() if value is not None}


def add_context_source(source: Callable[[], dict[str, Any]]) -> None:
    """Register a lookup for ids not bound yet (called only while formatting a JSON record)."""
    if source not in _sources:
        _sources.append(source)


def json_enabled() -> bool:
    """True when this process writes JSON lines (set by :func:`configure_logging`)."""
    return bool(_state["json"])


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (``record.call_id``, ...), where a formatter can use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, component, message, ids, extras, exception."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and value is not None:
                entry[name] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=repr)


def _make_json(handler: logging.Handler, component: str) -> None:
    handler.setFormatter(JsonFormatter(component))
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())


def configure_logging(component: str, *, level: str, json_lines: bool) -> None:
    """Set up this process's root logger: the house text format, or JSON lines with the call's ids."""
    _state.update(json=json_lines, component=component)
    if not json_lines:
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler(sys.stderr)
    _make_json(handler, component)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # a Python warning becomes a JSON line too, not bare text on stderr
    # The API writes its own access line with the request's ids (mm_app.api.observe); werkzeug's would repeat it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _connect_publish_log()


# ---- Celery: the dispatcher's sends, the worker's tasks ---------------------------------------------------------

_sent_logger = logging.getLogger("minimodal.dispatch")


def _task_ids(name: str, args: Any) -> dict[str, Any]:
    if name == keyspace.TASK_EXECUTE and isinstance(args, list | tuple) and len(args) >= 3:
        return {"call_id": args[0], "function_id": args[1], "user_id": args[2]}
    return {}


def log_sent(name: str, args: Any, queue: Any, task_id: str | None) -> None:
    """The line of one task sent to a worker's queue (by Celery, or mm_app.broker.TaskSender), with its ids."""
    ids = _task_ids(name, args)
    span = {"start": args[3], "end": args[4]} if ids and args is not None and len(args) >= 5 else {}
    _sent_logger.info("sent %s to %s", name, queue, extra={**ids, **span, "task_id": task_id})


def _on_published(
    sender: str | None = None, body: Any = None, headers: Any = None, routing_key: Any = None, **_: Any
) -> None:
    args = body[0] if isinstance(body, tuple) and body else None  # task message protocol 2: (args, kwargs, embed)
    log_sent(sender or "", args, routing_key, headers.get("id") if isinstance(headers, dict) else None)


def _connect_publish_log() -> None:
    from celery import signals

    signals.after_task_publish.connect(_on_published, weak=False, dispatch_uid="minimodal-published")


_task_tokens: dict[str, list[contextvars.Token[Any]]] = {}


def _on_task_start(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    ids = _task_ids(getattr(task, "name", ""), args)
    if ids and task_id:
        _task_tokens[task_id] = [_context[name].set(value) for name, value in ids.items()]


def _on_task_end(task_id: str | None = None, **_: Any) -> None:
    for token in reversed(_task_tokens.pop(task_id or "", [])):
        token.var.reset(token)


def _on_worker_logging(logger: logging.Logger | None = None, **_: Any) -> None:
    from minimodal import config

    if not config.get("log_json") or logger is None:
        return
    component = next((arg for arg in sys.argv[1:] if arg in ("worker", "beat")), "celery")
    _state.update(json=True, component=component)
    for handler in logger.handlers:
        _make_json(handler, component)
    from celery import signals

    signals.task_prerun.connect(_on_task_start, weak=False, dispatch_uid="minimodal-task-context")
    signals.task_postrun.connect(_on_task_end, weak=False, dispatch_uid="minimodal-task-context")
    _connect_publish_log()


def _on_worker_init(**_: Any) -> None:
    # Sent before Celery's start-up checks (whose warnings would otherwise print as plain text) and
    # before Celery sets up logging, which then leaves a root logger that has a handler alone.
    from minimodal import config

    if config.get("log_json"):
        configure_logging("worker", level=config.get("log_level"), json_lines=True)


def connect_celery_logging() -> None:
    """In a Celery process: switch Celery's handlers to JSON lines when ``MINIMODAL_LOG_JSON`` is set.

    Connected when :mod:`mm_app.celery_app` is imported; the setting is read when Celery sets up
    logging (worker start), not at import. Celery keeps redirecting ``print`` output (the function's
    own output) into logging, so that output becomes JSON lines carrying the task's ids as well.
    """
    from celery import signals

    signals.celeryd_init.connect(_on_worker_init, weak=False, dispatch_uid="minimodal-worker-init")
    signals.after_setup_logger.connect(_on_worker_logging, weak=False, dispatch_uid="minimodal-logging")
    signals.after_setup_task_logger.connect(_on_worker_logging, weak=False, dispatch_uid="minimodal-task-logging")
