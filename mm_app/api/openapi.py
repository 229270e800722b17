"""``GET /openapi.json``: an OpenAPI 3.1 description of every route of the REST API.

Written by hand, next to the routes it describes; tests/test_openapi.py compares its paths and methods
with ``app.url_map``, so a route added without its description (or the reverse) fails the suite.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

bp = Blueprint("openapi", __name__)

_JSON = "application/json"
_ERROR = {"$ref": "#/components/schemas/Error"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def _str(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def _int(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "integer", **({"description": description} if description else {}), **extra}


def _num(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "number", **({"description": description} if description else {}), **extra}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _str()}


def _op(
    summary: str,
    tag: str,
    *,
    ok: str = "200",
    reply: dict[str, Any] | None = None,
    media: str = _JSON,
    auth: bool = True,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    body_media: str = _JSON,
    errors: tuple[str, ...] = (),
    description: str = "",
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": "OK" if ok == "200" else "Created"}}
    if reply is not None:
        responses[ok]["content"] = {media: {"schema": reply}}
    # Any authenticated route may answer 400 (a bad parameter); any with a body 413 (over the payload limit).
    common = (("400", "401") if auth else ()) + (("413",) if body is not None else ())
    for status in sorted(set(common + errors)):
        responses[status] = {"$ref": f"#/components/responses/E{status}"}
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {body_media: {"schema": body}}}
    operation["security"] = [{"bearer": []}] if auth else []
    return operation


def _worker_op(summary: str, **kwargs: Any) -> dict[str, Any]:
    """An internal route: it takes the workers' credential (MINIMODAL_WORKER_TOKEN), and a user token gets 403."""
    operation = _op(summary, "internal", **kwargs)
    operation["security"] = [{"worker": []}]
    return operation


_SHA = _path("sha", "sha256 hex digest of the content")
_CONTAINER_ID = _path("container_id", "container id (ct-...)")
_CONTAINER = _obj(
    {
        "id": _str(),
        "app": _str(),
        "app_name": _str(),
        "function": _str(),
        "function_id": _str(),
        "runtime": _str(),
        "worker": _str(),
        "started_at": _num(),
        "sandbox": {"type": "boolean"},
    }
)
_CALL = _path("call_id", "function call id (fc-...)")
_CURSOR = _query("cursor", "stream cursor of the previous reply, `<ms>-<seq>`; `0-0` from the start")
_ENVELOPE = _obj(
    {
        "idx": _int("input index"),
        "status": _str("terminal status", enum=["completed", "failed", "dead_letter", "cancelled"]),
        "data": _str("base64 pickle of the return value or exception"),
        "blob": _str("blob id when the pickle was too large to inline"),
        "error_type": _str("minimodal.exception name of a platform-side failure"),
        "message": _str(),
        "traceback": _str(),
    }
)
_INPUTS = _obj(
    {
        "inputs": {
            "type": "array",
            "maxItems": 1000,
            "items": _obj({"args": _str("base64 pickle of (args, kwargs)"), "blob": _str("id from PUT /v1/blobs")}),
        },
        "more": {"type": "boolean", "description": "keep the call open for more inputs (a .map)"},
    },
    ["inputs"],
)
_SECRET = _obj({"name": _str(), "keys": {"type": "array", "items": _str()}, "created_at": _str(), "updated_at": _str()})
_VOL = _path("volume_id", "volume id (vo-...)")
_STREAM_EVENTS = _obj({"events": {"type": "array", "items": {"type": "object"}}})
_LOGS = _obj({"logs": {"type": "array", "items": {"type": "object"}}, "cursor": _str()})
_IMAGE = _obj(
    {
        "image_id": _str(),
        "status": _str(enum=["building", "ready", "failed", "process"]),
        "tag": _str(),
        "error": _str(),
        "events": {"type": "array", "items": {"type": "object"}},
        "built_at": _str(format="date-time"),
    }
)
_DEAD_LETTER = _obj(
    {
        "id": _int(),
        "call_id": _str(),
        "index": _int(),
        "function_id": _str(),
        "function": _str(),
        "attempts": _int(),
        "error": _str(),
        "traceback": _str(),
        "state": _str(enum=["open", "retried"]),
        "created_at": _str(format="date-time"),
        "retried_at": _str(format="date-time"),
    }
)
_USER = _obj({"name": _str(), "quota": _int(), "weight": _int(), "is_admin": {"type": "boolean"}})
_CHECK = _obj(
    {"ok": {"type": ["boolean", "null"], "description": "null: could not be checked"}, "error": _str()},
    additionalProperties=True,
)
_READY = _obj(
    {
        "status": _str(enum=["ready", "not ready"]),
        "failing": {"type": "array", "items": _str(enum=["database", "redis", "dispatcher", "workers"])},
        "checks": _obj({name: _CHECK for name in ("database", "redis", "dispatcher", "workers")}),
        "error": {"$ref": "#/components/schemas/Error/properties/error"},
    },
    ["status", "checks"],
)
_SUMMARY = _obj({"count": _num(), **{k: _num(type=["number", "null"]) for k in ("avg", "p50", "p95", "max")}})
_STATS = _obj(
    {
        "scope": _str("`user`: the token's own numbers; `all`: an admin token's view", enum=["user", "all"]),
        "user": _str("the token's user"),
        "at": _num("server time, seconds since the epoch"),
        "uptime": _num("seconds since this API process started"),
        "functions": _int("functions deployed"),
        "function_calls": _int("function calls accepted (a .map is one)"),
        "calls": _obj(
            {s: _int() for s in ("queued", "dispatched", "running", "completed", "failed", "dead_letter", "cancelled")},
            description="inputs of function calls by status",
        ),
        "users": {
            "type": "array",
            "items": _obj(
                {
                    "id": _int(),
                    "name": _str(),
                    "running": _int("tasks in flight (what the quota limits)"),
                    "queued": _int("inputs waiting"),
                    "quota": _int(),
                    "weight": _int(),
                    "share": _num("this user's part of all tasks in flight, 0-1"),
                    "fair_share": _num(
                        "admin view: the part due by weight among users with work (else null)", type=["number", "null"]
                    ),
                }
            ),
        },
        "workers": _obj(
            {
                "total": _int(),
                "idle": _int(),
                "busy": _int(),
                "unhealthy": _int("stale heartbeat"),
                "draining": _int("shutting down: finishing their tasks, taking no new ones"),
                "runtime": {"type": "object", "additionalProperties": _int()},
                "capacity": _int("task slots of healthy workers"),
                "busy_runners": _int(),
                "idle_runners": _int(),
                "list": {"type": "array", "items": {"type": "object"}},
            }
        ),
        "dispatcher": _obj({"alive": {"type": "boolean"}, "heartbeat_age": _num(type=["number", "null"])}),
        "queues": {"type": "object", "additionalProperties": _int(), "description": "Celery queue -> messages waiting"},
        "duration": _SUMMARY,
        "queued_wait": _SUMMARY,
        "function_list": {"type": "array", "items": {"type": "object"}},
        "recent_failures": {
            "type": "array",
            "items": _obj(
                {
                    "call_id": _str(),
                    "idx": _int(),
                    "status": _str(enum=["failed", "dead_letter"]),
                    "function_id": _str(),
                    "function": _str(),
                    "user": _str(),
                    "error": _str(),
                    "worker": _str(),
                    "finished_at": _str(format="date-time"),
                }
            ),
        },
    }
)


def _paths() -> dict[str, dict[str, Any]]:
    return {
        "/health": {
            "get": _op(
                "Liveness",
                "operations",
                auth=False,
                reply=_obj({"status": _str(), "pid": _int("the API process that answered"), "uptime": _num()}),
            )
        },
        "/ready": {
            "get": _op(
                "Readiness: database, Redis, a fresh dispatcher heartbeat, a live worker",
                "operations",
                auth=False,
                reply=_READY,
                errors=("503",),
                description="503 names the failing checks in `failing` (the body has the same shape, plus `error`).",
            )
        },
        "/stats": {"get": _op("Numbers of what runs, waits and failed", "operations", reply=_STATS)},
        "/metrics": {
            "get": _op(
                "Prometheus metrics (admin)",
                "operations",
                reply=_str(),
                media="text/plain",
                errors=("403",),
                description="Text exposition format: the /stats numbers and `minimodal_call_latency_seconds`.",
            )
        },
        "/openapi.json": {"get": _op("This document", "operations", auth=False, reply={"type": "object"})},
        "/dashboard": {
            "get": _op(
                "The operator's dashboard (HTML; asks for a token, then polls /stats)",
                "operations",
                auth=False,
                reply=_str(),
                media="text/html",
            )
        },
        "/dashboard/static/{filename}": {
            "get": _op(
                "The dashboard's script, style sheet and charting library",
                "operations",
                auth=False,
                params=[_path("filename", "file name")],
                reply=_str(),
                media="application/octet-stream",
                errors=("404",),
            )
        },
        "/dead-letter-queue": {
            "get": _op(
                "Inputs whose retries ran out (a user's own; an admin sees all)",
                "dead letters",
                params=[
                    _query("page", "page number, from 1", _int()),
                    _query("per_page", "entries per page (1-200)", _int()),
                    _query("state", "open (default), retried or all", _str(enum=["open", "retried", "all"])),
                ],
                reply=_obj(
                    {
                        "items": {"type": "array", "items": _DEAD_LETTER},
                        "page": _int(),
                        "per_page": _int(),
                        "total": _int(),
                    }
                ),
                errors=("400",),
            )
        },
        "/dead-letter-queue/{dead_letter_id}/retry": {
            "post": _op(
                "Queue a dead-lettered input again",
                "dead letters",
                params=[{**_path("dead_letter_id", "dead-letter entry id"), "schema": _int()}],
                reply=_obj({"id": _int(), "call_id": _str(), "index": _int(), "state": _str()}),
                errors=("400", "404"),
            )
        },
        "/v1/objects": {
            "post": _op(
                "One Dict or Queue operation of the token's user (the SDK's Dict and Queue use it)",
                "objects",
                body=_obj(
                    {"kind": _str(enum=["dict", "queue"]), "op": _str(), "name": _str(), "id": _str()}, ["kind", "op"]
                ),
                reply={"type": "object"},
                errors=("400", "404"),
                description="Keys and values are base64 cloudpickles; another user's object answers 404.",
            )
        },
        "/v1/secrets": {
            "post": _op(
                "Store a secret (encrypted); 201 when new, 200 when overwritten",
                "secrets",
                ok="201",
                body=_obj({"name": _str(), "values": {"type": "object"}, "overwrite": {"type": "boolean"}}, ["name"]),
                reply=_SECRET,
                errors=("400",),
            ),
            "get": _op(
                "The user's secrets: names and variable names, never values",
                "secrets",
                reply=_obj({"secrets": {"type": "array", "items": _SECRET}}),
            ),
        },
        "/v1/secrets/{name}": {
            "get": _op(
                "One secret, without its values",
                "secrets",
                params=[_path("name", "secret name")],
                reply=_SECRET,
                errors=("404",),
            ),
            "delete": _op(
                "Delete a secret",
                "secrets",
                params=[_path("name", "secret name")],
                reply=_obj({"deleted": _str()}),
                errors=("404",),
            ),
        },
        "/v1/volumes/{volume_id}/entries": {
            "get": _op(
                "Files and directories of a volume",
                "volumes",
                params=[_VOL, _query("path", "directory or file"), _query("recursive", "1 to list all below")],
                reply=_obj({"entries": {"type": "array", "items": {"type": "object"}}}),
                errors=("404",),
            )
        },
        "/v1/volumes/{volume_id}/files/{path}": {
            "get": _op(
                "Stream a file out",
                "volumes",
                params=[_VOL, _path("path", "file path")],
                media="application/octet-stream",
                reply={"type": "string", "format": "binary"},
                errors=("404",),
            ),
            "put": _op(
                "Stream a file in and commit it",
                "volumes",
                ok="201",
                params=[_VOL, _path("path", "file path"), _query("force", "1 to overwrite")],
                body={"type": "string", "format": "binary"},
                body_media="application/octet-stream",
                reply=_obj({"path": _str(), "sha": _str(), "size": _int()}),
                errors=("400", "404"),
            ),
            "delete": _op(
                "Remove a file, or a directory with recursive=1",
                "volumes",
                params=[_VOL, _path("path", "file or directory"), _query("recursive", "1 for a directory")],
                reply=_obj({"removed": {"type": "array", "items": _str()}}),
                errors=("400", "404"),
            ),
        },
        "/internal/volume-blobs/{sha}": {
            "get": _worker_op(
                "Stream a stored volume file version out (workers only; HEAD: whether it is stored)",
                params=[_SHA],
                media="application/octet-stream",
                reply={"type": "string", "format": "binary"},
                errors=("403", "404"),
            ),
            "put": _worker_op(
                "Stream a volume file version in; kept only if it hashes to {sha} (workers only)",
                ok="201",
                params=[_SHA],
                body={"type": "string", "format": "binary"},
                body_media="application/octet-stream",
                reply=_obj({"sha": _str(), "size": _int()}),
                errors=("400", "403"),
            ),
        },
        "/internal/cluster": {
            "get": _worker_op(
                "What a worker joining from another machine needs: Redis, database, registry, secrets' key",
                reply=_obj(
                    {
                        "redis_url": _str(),
                        "database_url": _str(),
                        "registry": {"type": ["string", "null"]},
                        "secret_key": _str(),
                    }
                ),
                errors=("403",),
            ),
        },
        "/v1/me": {"get": _op("The token's user", "users", reply=_USER)},
        "/v1/users": {
            "post": _op(
                "Create a user (admin); the token is shown once",
                "users",
                ok="201",
                body=_obj({"name": _str(), "quota": _int(minimum=1), "weight": _int(minimum=1)}, ["name"]),
                reply=_obj({"name": _str(), "quota": _int(), "weight": _int(), "token": _str()}),
                errors=("400", "403"),
            )
        },
        "/v1/tokens/revoke": {
            "post": _op(
                "Revoke the caller's token, or (admin) the token of `user`; refused from the next request on",
                "users",
                body=_obj({"user": _str("whose token (admin only when not the caller)")}),
                reply=_obj({"user": _str(), "revoked_at": _str()}),
                errors=("400", "403", "404"),
            )
        },
        "/v1/users/{name}": {
            "patch": _op(
                "Change a user's quota or weight (admin)",
                "users",
                params=[_path("name", "user name")],
                body=_obj({"quota": _int(minimum=1), "weight": _int(minimum=1)}),
                reply=_USER,
                errors=("400", "403", "404"),
            )
        },
        "/v1/apps": {
            "get": _op(
                "The user's apps, newest first (at most 200), with their functions' tags",
                "apps",
                reply=_obj(
                    {
                        "apps": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "app_id": _str(),
                                    "name": _str(),
                                    "state": _str("ephemeral, deployed, replaced (by a newer version) or stopped"),
                                    "created_at": _str(format="date-time"),
                                    "stopped_at": _str(format="date-time"),
                                    "functions": {"type": "array", "items": _str()},
                                }
                            ),
                        }
                    }
                ),
            ),
            "post": _op(
                "Create an app with its functions (code is a base64 cloudpickle)",
                "apps",
                ok="201",
                body=_obj(
                    {
                        "name": _str(),
                        "functions": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "tag": _str(),
                                    "code": _str(),
                                    "options": {"type": "object"},
                                    "image": _str(),
                                    "spec": {"type": "object"},
                                    "secrets": {"type": "array", "items": {"type": "object"}},
                                },
                                ["tag", "code"],
                            ),
                        },
                    }
                ),
                reply=_obj(
                    {
                        "app_id": _str(),
                        "functions": {"type": "object", "additionalProperties": _str()},
                        "web_urls": {"type": "object", "additionalProperties": _str()},
                    }
                ),
                errors=("400", "404"),
            ),
        },
        "/v1/apps/{app_id}/stop": {
            "post": _op(
                "Stop an app",
                "apps",
                params=[_path("app_id", "app id (ap-...)")],
                reply=_obj({"app_id": _str(), "state": _str()}),
                errors=("404",),
            )
        },
        "/v1/apps/{app}/logs": {
            "get": _op(
                "What an app's calls printed",
                "logs",
                params=[
                    _path("app", "app id or name (the newest app of that name)"),
                    _CURSOR,
                    _query("follow", "1: wait for more lines"),
                ],
                reply=_LOGS,
                errors=("400", "404"),
            )
        },
        "/v1/functions/{function_id}": {
            "get": _op(
                "A function's app, tag and options",
                "apps",
                params=[_path("function_id", "function id (fu-...)")],
                reply=_obj({"function_id": _str(), "app_id": _str(), "tag": _str(), "options": {"type": "object"}}),
                errors=("404",),
            )
        },
        "/v1/functions/{function_id}/shell": {
            "post": _op(
                "Start a container of the function that runs no input, for a terminal (minimodal shell)",
                "containers",
                params=[_path("function_id", "function id (fu-...)")],
                reply=_obj({"container_id": _str(), "worker": _str()}),
                errors=("404", "503"),
            )
        },
        "/v1/containers": {
            "get": _op(
                "The user's running containers (runners): app, function, worker, start time",
                "containers",
                reply=_obj({"containers": {"type": "array", "items": _CONTAINER}}),
            )
        },
        "/v1/containers/{container_id}": {
            "get": _op("One running container", "containers", params=[_CONTAINER_ID], reply=_CONTAINER, errors=("404",))
        },
        "/v1/containers/{container_id}/logs": {
            "get": _op(
                "What the inputs that ran in the container printed",
                "containers",
                params=[_CONTAINER_ID],
                reply=_obj({"logs": {"type": "array", "items": {"type": "object"}}}),
                errors=("404",),
            )
        },
        "/v1/containers/{container_id}/stop": {
            "post": _op(
                "Stop the container (an input running there is retried by its policy)",
                "containers",
                params=[_CONTAINER_ID],
                reply=_obj({"stopped": _str()}),
                errors=("404", "503"),
            )
        },
        "/v1/containers/{container_id}/exec": {
            "post": _op(
                "Run a command in the container to its end",
                "containers",
                params=[_CONTAINER_ID],
                body=_obj({"cmd": {"type": "array", "items": _str()}, "timeout": _num()}, required=["cmd"]),
                reply=_obj({"exit_code": _int(), "output": _str(format="byte")}),
                errors=("404", "503"),
            )
        },
        "/v1/containers/{container_id}/tty": {
            "get": _op(
                "WebSocket of a terminal in the container",
                "containers",
                params=[
                    _CONTAINER_ID,
                    _query("cmd", "JSON list: the command (default a shell)"),
                    _query("rows", "terminal rows", _int()),
                    _query("cols", "terminal columns", _int()),
                    _query("secrets", "1: the function's secrets in its environment"),
                    _query("stop_after", "1: stop the container when the terminal ends"),
                ],
                ok="101",
                description=(
                    'Upgrade to a WebSocket. The client sends `{"in": base64}`, `{"resize": [rows, cols]}`, '
                    '`{"close": true}`; the server sends `{"out": base64}`, then `{"exit": code}`.'
                ),
                errors=("404",),
            )
        },
        "/v1/functions/{function_id}/calls": {
            "post": _op(
                "Start a function call with its first inputs",
                "calls",
                ok="201",
                params=[_path("function_id", "function id (fu-...)")],
                body={
                    "allOf": [
                        _INPUTS,
                        _obj(
                            {
                                "wait": _num("seconds to wait for outputs in the reply (0-60)"),
                                "logs": {"type": "boolean", "description": "with wait: return printed lines too"},
                            }
                        ),
                    ]
                },
                reply=_obj(
                    {
                        "call_id": _str(),
                        "first": _int(),
                        "count": _int(),
                        "outputs": {"type": "array", "items": _ENVELOPE},
                        "cursor": _str(),
                    }
                ),
                errors=("400", "404", "413", "429"),
            )
        },
        "/v1/calls/{call_id}": {
            "get": _op(
                "A call's inputs by status",
                "calls",
                params=[_CALL],
                reply=_obj(
                    {
                        "call_id": _str(),
                        "function_id": _str(),
                        "num_inputs": _int(),
                        "accepting": {"type": "boolean"},
                        "parent_call_id": {"type": ["string", "null"], "description": "the call that made this one"},
                        "statuses": {"type": "object", "additionalProperties": _int()},
                        "done": {"type": "boolean"},
                    }
                ),
                errors=("404",),
            )
        },
        "/v1/calls/{call_id}/cancel": {
            "post": _op(
                "Cancel what has not ended of a call and of the calls it made: each such input ends cancelled",
                "calls",
                params=[_CALL],
                reply=_obj({"call_id": _str(), "cancelled": _int()}),
                errors=("404",),
            )
        },
        "/v1/calls/{call_id}/attempts": {
            "get": _op(
                "Every attempt at every input of a call",
                "calls",
                params=[_CALL],
                reply=_obj(
                    {
                        "attempts": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "index": _int(),
                                    "attempt": _int(),
                                    "status": _str(),
                                    "error": _str(),
                                    "worker": _str(),
                                    "started_at": _str(format="date-time"),
                                    "finished_at": _str(format="date-time"),
                                }
                            ),
                        }
                    }
                ),
                errors=("404",),
            )
        },
        "/v1/calls/{call_id}/inputs": {
            "post": _op(
                "Add inputs to an open call (.map)",
                "calls",
                params=[_CALL],
                body=_INPUTS,
                reply=_obj({"call_id": _str(), "first": _int(), "count": _int()}),
                errors=("400", "404", "413", "429"),
            )
        },
        "/v1/calls/{call_id}/outputs": {
            "get": _op(
                "Outputs after a cursor (long-poll)",
                "calls",
                params=[_CALL, _CURSOR, _query("timeout", "seconds to wait for the first output (0-60)", _num())],
                reply=_obj({"outputs": {"type": "array", "items": _ENVELOPE}, "cursor": _str()}),
                errors=("400", "404", "410"),
            )
        },
        "/v1/calls/{call_id}/stream": {
            "get": _op(
                "Generator items, outputs and logs after per-kind cursors (long-poll)",
                "calls",
                params=[
                    _CALL,
                    _query("items", "cursor of the items stream"),
                    _query("outputs", "cursor of the outputs stream"),
                    _query("logs", "cursor of the logs stream"),
                    _query("timeout", "seconds to wait (0-60)", _num()),
                ],
                reply=_STREAM_EVENTS,
                errors=("400", "404"),
            )
        },
        "/v1/calls/{call_id}/ws": {
            "get": _op(
                "WebSocket of the same events as /stream",
                "calls",
                params=[_CALL],
                ok="101",
                description="Upgrade to a WebSocket; the server sends JSON text messages (`batch` or `ping`).",
                errors=("404",),
            )
        },
        "/v1/calls/{call_id}/logs": {
            "get": _op(
                "What a call printed",
                "logs",
                params=[_CALL, _CURSOR, _query("follow", "1: wait for more lines")],
                reply=_LOGS,
                errors=("400", "404"),
            )
        },
        "/v1/blobs": {
            "put": _op(
                "Upload a large payload (streamed body)",
                "calls",
                ok="201",
                body=_str(format="binary"),
                body_media="application/octet-stream",
                reply=_obj({"blob_id": _str(), "size": _int()}),
                errors=("413",),
            )
        },
        "/v1/blobs/{blob_id}": {
            "get": _op(
                "Download a blob",
                "calls",
                params=[_path("blob_id", "blob id")],
                reply=_str(format="binary"),
                media="application/octet-stream",
                errors=("404",),
            )
        },
        "/v1/files/missing": {
            "post": _op(
                "Which of these files (by sha256) the server lacks: the client uploads only those",
                "images",
                body=_obj({"shas": {"type": "array", "items": _str(), "maxItems": 10000}}, ["shas"]),
                reply=_obj({"missing": {"type": "array", "items": _str()}}),
                errors=("400",),
            )
        },
        "/v1/files/{sha}": {
            "head": _op("Whether a build file is stored", "images", params=[_path("sha", "sha256")], errors=("404",)),
            "put": _op(
                "Upload a build file, named by its sha256",
                "images",
                ok="201",
                params=[_path("sha", "sha256 hex digest of the body")],
                body=_str(format="binary"),
                body_media="application/octet-stream",
                reply=_obj({"sha": _str(), "size": _int()}),
                errors=("400", "413"),
            ),
        },
        "/v1/images": {
            "post": _op(
                "Register an image spec and start its build",
                "images",
                ok="201",
                body=_obj({"layers": {"type": "array", "items": {"type": "object"}}, "python": _str()}, ["layers"]),
                reply=_IMAGE,
                errors=("400",),
            )
        },
        "/v1/images/{image_id}": {
            "get": _op(
                "An image's build status and log lines after a cursor",
                "images",
                params=[_path("image_id", "image id (im-...)"), _CURSOR, _query("timeout", "seconds (0-30)", _num())],
                reply={"allOf": [_IMAGE, _obj({"logs": {"type": "array", "items": _str()}, "cursor": _str()})]},
                errors=("404",),
            )
        },
    }


_ERROR_TEXT = {
    "400": "Invalid request",
    "401": "Missing, invalid or revoked token",
    "403": "Not an admin, or not a worker on an internal route",
    "404": "Not found (or not yours)",
    "409": "The sandbox has ended",
    "410": "Outputs expired",
    "413": "Payload too large",
    "429": "Too many call submissions for this token; see Retry-After",
    "503": "A service is down",
}


def _more_paths() -> dict[str, Any]:
    """Routes described next to their blueprints (deployments, web endpoints, sandboxes)."""
    from . import deploys, sandboxes, tunnels, web

    return {**deploys.openapi_paths(), **web.openapi_paths(), **sandboxes.openapi_paths(), **tunnels.openapi_paths()}


def document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document; ``server_url`` fills ``servers`` when given."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "MiniModal API",
            "version": "1",
            "description": 'Errors answer `{"error": {"type", "message"}}` with a minimodal.exception name.',
        },
        "paths": {**_paths(), **_more_paths()},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "worker": {"type": "http", "scheme": "bearer", "description": "the workers' MINIMODAL_WORKER_TOKEN"},
            },
            "schemas": {"Error": _obj({"error": _obj({"type": _str(), "message": _str()}, ["type", "message"])})},
            "responses": {
                f"E{status}": {"description": text, "content": {_JSON: {"schema": _ERROR}}}
                for status, text in _ERROR_TEXT.items()
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


@bp.get("/openapi.json")
def openapi_json():  # type: ignore[no-untyped-def]
    return document(request.host_url.rstrip("/"))
