"""A user's running containers: list, logs, stop, exec, a terminal (WebSocket), and a shell for a function.

The workers list their runners in their heartbeats (``mm_app/tasks/containers.py``), so listing asks
nobody; acting on one container is a Redis request to the worker that runs it, answered by its
control thread. Another user's container answers 404 on every route, as if it did not exist.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from flask import Blueprint, g, request
from flask_sock import Sock
from pydantic import Field
from sqlalchemy import select

from minimodal import protocol
from minimodal.exception import BY_NAME, InvalidError, NotFoundError, ServiceError

from .. import registry
from ..models import AppRecord, FunctionRecord
from ..ownership import owned
from .auth import authenticate, token_revoked
from .schema import Body, Doc, Query, Reply
from .services import services

bp = Blueprint("containers", __name__, url_prefix="/v1")
bp.before_request(authenticate)
sock = Sock()
doc = Doc("containers")


class Container(Reply):
    id: str
    app: str
    app_name: str
    function: str
    function_id: str
    runtime: str
    worker: str
    started_at: float
    sandbox: bool


class Containers(Reply):
    containers: list[Container]


class ContainerLogs(Reply):
    logs: list[dict[str, Any]]


class Stopped(Reply):
    stopped: str


class Command(Body):
    cmd: list[str]
    timeout: float = Field(60, description="seconds, at most EXEC_TIMEOUT_MAX")


class Finished(Reply):
    exit_code: int
    output: str = Field(json_schema_extra={"format": "byte"})


class Shell(Reply):
    container_id: str
    worker: str


class Terminal(Query):
    cmd: str = Field('["/bin/sh"]', description="JSON list: the command (default a shell)")
    rows: int = Field(24, ge=1, le=10_000, description="terminal rows")
    cols: int = Field(80, ge=1, le=10_000, description="terminal columns")
    secrets: str = Field("0", description="1: the function's secrets in its environment")
    stop_after: str = Field("0", description="1: stop the container when the terminal ends")


CONTROL_WAIT_SECONDS = 30  # how long the API waits for a worker to answer a stop, a tty or a sandbox
EXEC_TIMEOUT_MAX = 600  # seconds `container exec` may run at most


@bp.before_request
def _check_before_upgrade() -> None:
    """A WebSocket is refused with the REST status (404) before it is upgraded, not closed after."""
    if request.endpoint == "containers.tty" and request.view_args:
        _own_container(request.view_args["container_id"])


def _containers() -> list[dict[str, Any]]:
    """The user's running containers, from the live workers' heartbeats, oldest first."""
    mine = []
    for worker in registry.live_workers(services().redis):
        for item in worker.get("containers", []):
            if item.get("user") == str(g.user.id) and item.get("id"):
                mine.append({**item, "worker": worker["worker_id"]})
    app_ids = {c["app"] for c in mine}
    if app_ids:
        with services().db.read_core() as connection:
            rows = connection.execute(select(AppRecord.id, AppRecord.name).where(AppRecord.id.in_(app_ids)))
            names = {app_id: name for app_id, name in rows}
    else:
        names = {}
    for item in mine:
        item["app_name"] = names.get(item["app"])
        item.pop("user", None)
    return sorted(mine, key=lambda c: c.get("started_at") or 0)


def _own_container(container_id: str) -> dict[str, Any]:
    for item in _containers():
        if item["id"] == container_id:
            return item
    raise NotFoundError(f"no running container {container_id!r}")


def control(worker_id: str, op: str, wait: float = CONTROL_WAIT_SECONDS, **fields: Any) -> dict[str, Any]:
    """Ask a worker's control thread; its answer, or its error raised as the same minimodal error."""
    redis, request_id = services().redis, protocol.new_id("cr")
    body = {"id": request_id, "op": op, "user": str(g.user.id), **fields}
    redis.rpush(protocol.control_key(worker_id), json.dumps(body))
    reply = redis.blpop([protocol.control_reply_key(request_id)], timeout=max(1, int(wait)))
    if reply is None:
        raise ServiceError(f"worker {worker_id} did not answer within {wait:g} s; is it running?")
    answer: dict[str, Any] = json.loads(reply[1])
    error = answer.get("error")
    if error:
        raise BY_NAME.get(error.get("type"), ServiceError)(error.get("message", "the worker failed"))
    return answer


@bp.get("/containers")
@doc("The user's running containers (runners): app, function, worker, start time", reply=Containers)
def list_containers():  # type: ignore[no-untyped-def]
    return {"containers": _containers()}


@bp.get("/containers/<container_id>")
@doc("One running container", reply=Container, errors=(404,))
def get_container(container_id: str):  # type: ignore[no-untyped-def]
    return _own_container(container_id)


@bp.get("/containers/<container_id>/logs")
@doc("What the inputs that ran in the container printed", reply=ContainerLogs, errors=(404,))
def container_logs(container_id: str):  # type: ignore[no-untyped-def]
    """What the inputs that ran in this container printed (from its app's log stream)."""
    item = _own_container(container_id)
    entries = services().payloads.read_streams({protocol.app_logs_key(item["app"]): "0-0"}, 0, count=10000)
    from .streams import encode_entry

    events = [encode_entry("logs", entry_id, fields) for _, entry_id, fields in entries]
    return {"logs": [e for e in events if e.get(protocol.LOG_CONTAINER) == container_id]}


@bp.post("/containers/<container_id>/stop")
@doc("Stop the container (an input running there is retried by its policy)", reply=Stopped, errors=(404, 503))
def stop_container(container_id: str):  # type: ignore[no-untyped-def]
    item = _own_container(container_id)
    return control(item["worker"], "stop", container=container_id)


@bp.post("/containers/<container_id>/exec")
@doc("Run a command in the container to its end", body=Command, reply=Finished, errors=(404, 503))
def exec_in_container(container_id: str, body: Command):  # type: ignore[no-untyped-def]
    """Run a command in the container to its end: ``{"cmd": [...], "timeout": s}`` -> exit code and output."""
    cmd, timeout = body.cmd, body.timeout
    if not cmd:
        raise InvalidError("cmd must be a non-empty list of strings")
    if not 0 < timeout <= EXEC_TIMEOUT_MAX:
        raise InvalidError(f"timeout must be above 0 and at most {EXEC_TIMEOUT_MAX} s")
    item = _own_container(container_id)
    return control(item["worker"], "exec", wait=timeout + 10, container=container_id, cmd=cmd, timeout=timeout)


@bp.post("/functions/<function_id>/shell")
@doc(
    "Start a container of the function that runs no input, for a terminal (minimodal shell)",
    reply=Shell,
    errors=(404, 503),
)
def start_shell(function_id: str):  # type: ignore[no-untyped-def]
    """Start a container of the function (its image, volumes, secrets) that runs no input: ``minimodal shell``."""
    with services().db.read() as session:
        record = owned(session, FunctionRecord, function_id, g.user.id, "function")
        needs_docker = record.image_tag is not None
    runtime = "docker" if needs_docker else "process"
    workers = [w for w in registry.live_workers(services().redis) if runtime in w.get("runtimes", [])]
    if not workers:
        raise ServiceError(f"no live worker has the {runtime} runtime this function needs")
    worker = min(workers, key=lambda w: len(w.get("containers", [])))["worker_id"]
    answer = control(worker, "sandbox", wait=120, function_id=function_id)
    deadline = time.monotonic() + 15  # the worker beats at once: wait for the listing to show it
    while not any(c["id"] == answer["container_id"] for c in _containers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"container_id": answer["container_id"], "worker": worker}


@sock.route("/containers/<container_id>/tty", bp=bp)
@doc(
    "WebSocket of a terminal in the container",
    query=Terminal,
    ok=101,
    errors=(404,),
    description=(
        'Upgrade to a WebSocket. The client sends `{"in": base64}`, `{"resize": [rows, cols]}`, '
        '`{"close": true}`; the server sends `{"out": base64}`, then `{"exit": code}`.'
    ),
)
def tty(ws: Any, container_id: str, query: Terminal) -> None:
    """A terminal in the container: ``?cmd=`` (JSON list, default a shell), ``rows``/``cols``, ``secrets=1``,
    ``stop_after=1`` (stop the container when the terminal ends: ``minimodal shell``).

    The client sends JSON text messages ``{"in": base64}``, ``{"resize": [rows, cols]}``, ``{"close": true}``;
    the server sends ``{"out": base64}`` and, at the end, ``{"exit": code}``.
    """
    item = _own_container(container_id)
    try:
        cmd = json.loads(query.cmd or '["/bin/sh"]')
    except ValueError as exc:
        raise InvalidError("cmd must be a JSON list of strings") from exc
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        raise InvalidError("cmd must be a JSON list of strings")
    size = [query.rows, query.cols]
    session = protocol.new_id("tt")
    control(
        item["worker"],
        "tty",
        container=container_id,
        session=session,
        cmd=cmd,
        size=size,
        secrets=query.secrets == "1",
        stop_after=query.stop_after == "1",
    )
    redis, in_key, out_key = services().redis, protocol.tty_in_key(session), protocol.tty_out_key(session)
    import threading

    closed = threading.Event()

    def forward_input() -> None:
        try:
            while not closed.is_set():
                message = ws.receive(timeout=1)
                if message is None:
                    continue
                redis.rpush(in_key, message if isinstance(message, str) else message.decode())
                redis.expire(in_key, 3600)
        except Exception:  # noqa: BLE001 - the client went away: end the session
            pass
        finally:
            closed.set()
            redis.rpush(in_key, json.dumps({"close": True}))
            redis.expire(in_key, 60)

    threading.Thread(target=forward_input, name="mm-tty-in", daemon=True).start()
    cursor, checked = "0-0", time.monotonic()
    try:
        while True:
            if time.monotonic() - checked >= 1:
                if token_revoked(g.user.id):
                    break
                checked = time.monotonic()
            entries = redis.xread({out_key: cursor}, count=100, block=1000) or []
            ended = None
            for _, items in entries:
                for entry_id, fields in items:
                    cursor = entry_id
                    if b"end" in fields:
                        ended = fields[b"end"].decode()
                    else:
                        ws.send(json.dumps({"out": base64.b64encode(fields[b"d"]).decode()}))
            if ended is not None:
                ws.send(json.dumps({"exit": int(ended) if ended else None}))
                break
            if closed.is_set() and not entries:
                # the client left: give the worker a moment to end the session, then stop reading
                if redis.exists(out_key) == 0 or time.monotonic() - checked > 5:
                    break
    finally:
        closed.set()
        ws.close()
