"""``/v1/sandboxes``: create sandboxes, run processes in them, stream their output, end them.

``POST /v1/sandboxes`` records the sandbox and queues it like a call of one input (it counts against the
user's quota and fair share; see :mod:`mm_app.sandboxes`). Every other route reaches the worker that
owns the sandbox through Redis only: ``exec`` and ``terminate`` push a request on the sandbox's control
list, ``stdin`` pushes chunks on a process's stdin list, and ``output`` long-polls a process's stdout or
stderr stream after a cursor, so a client that reconnects continues where it was. Another user's
sandbox is 404 on every route.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from flask import Blueprint, g, request
from sqlalchemy import select

from minimodal import defaults, protocol
from minimodal.exception import InvalidError, NotFoundError, SandboxTerminatedError, ServiceError
from minimodal.protocol import PendingEntry, SandboxState

from .. import objects, sandboxes, vault
from ..models import AppRecord, ImageRecord, SandboxRecord
from ..ownership import owned
from .auth import authenticate, field, json_body
from .services import services

bp = Blueprint("sandboxes", __name__, url_prefix="/v1/sandboxes")
bp.before_request(authenticate)

MAX_WAIT = 30.0  # seconds one long-poll may block
MAX_CHUNKS = 1000  # stream entries one output read returns
_CURSOR = re.compile(r"^\d+-\d+$")
_CREATE_FIELDS = (
    "app_id",
    "cmd",
    "image",
    "secrets",
    "volumes",
    "workdir",
    "timeout",
    "idle_timeout",
    "cpu",
    "memory",
    "gpu",
    "block_network",
    "encrypted_ports",
    "unencrypted_ports",
    "tags",
)


def _own(session: Any, sandbox_id: str) -> SandboxRecord:
    record = owned(session, SandboxRecord, sandbox_id, g.user.id, "sandbox")
    session.expunge(record)
    return record


def _record(sandbox_id: str) -> SandboxRecord:
    with services().db.read() as session:
        return _own(session, sandbox_id)


def _wait_arg(name: str = "timeout", default: float = 0.0) -> float:
    try:
        value = float(request.args.get(name, default))
    except ValueError:
        raise InvalidError(f"{name} must be a number of seconds") from None
    return max(0.0, min(MAX_WAIT, value))


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidError(f"{what} must be a list of strings")
    return value


def _number(body: dict[str, Any], name: str, *, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidError(f"{name} must be a number from {low:g} to {high:g}")
    return value


def _ports(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value
    ):
        raise InvalidError(f"{name} must be a list of TCP port numbers (1 to 65535)")
    return sorted(set(value))


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidError('tags must be an object of strings, e.g. {"purpose": "eval"}')
    return dict(value)


@bp.post("")
def create_sandbox():  # type: ignore[no-untyped-def]
    body = json_body(*_CREATE_FIELDS)
    cmd = _strings(body.get("cmd") or [], "cmd")
    timeout = _number(body, "timeout", low=1, high=defaults.MAX_SANDBOX_TIMEOUT) or defaults.DEFAULT_SANDBOX_TIMEOUT
    idle_timeout = _number(body, "idle_timeout", low=1, high=defaults.MAX_SANDBOX_TIMEOUT)
    cpu = _number(body, "cpu", low=0.001, high=1024)
    memory = _number(body, "memory", low=1, high=1 << 22)
    workdir = field(body, "workdir", str, required=False)
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidError(f"workdir={workdir!r} must be an absolute path")
    try:
        protocol.parse_gpu(field(body, "gpu", str, required=False))
    except ValueError as exc:
        raise InvalidError(f"gpu: {exc}") from None
    encrypted, unencrypted = _ports(body, "encrypted_ports"), _ports(body, "unencrypted_ports")
    if (encrypted or unencrypted) and body.get("block_network"):
        raise InvalidError("block_network=True takes no encrypted_ports or unencrypted_ports: nothing could reach them")
    svc = services()
    volumes = field(body, "volumes", dict, required=False, default={})
    mounted = {}
    for path, volume_id in volumes.items():
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(volume_id, str):
            raise InvalidError('volumes must map absolute paths to volume ids: {"/data": "vo-..."}')
        mounted[path] = objects.resolve(svc.redis, g.user.id, {"kind": "volume", "id": volume_id})
    sandbox_id = protocol.new_id("sb")
    with svc.db.write() as session:
        app_id = field(body, "app_id", str, required=False)
        if app_id is not None:
            app = owned(session, AppRecord, app_id, g.user.id, "app")
            if app.state in ("stopped", "replaced"):
                raise InvalidError(f"app {app_id} is {app.state}; sandboxes need a running app")
        image_tag = _image_tag(session, field(body, "image", str, required=False))
        secret_ids = vault.attach(
            session, g.user.id, "sandbox", field(body, "secrets", list, required=False, default=[])
        )
        spec = {
            "cmd": cmd,
            "image": image_tag,
            "secrets": secret_ids,
            "volumes": mounted,
            "workdir": workdir,
            "timeout": timeout,
            "idle_timeout": idle_timeout,
            "cpu": cpu,
            "memory": memory,
            "gpu": body.get("gpu"),
            "block_network": bool(body.get("block_network", False)),
            "encrypted_ports": encrypted,
            "unencrypted_ports": unencrypted,
        }
        session.add(
            SandboxRecord(
                id=sandbox_id,
                user_id=g.user.id,
                app_id=app_id,
                spec=spec,
                tags=_tags(body.get("tags") or {}),
                state=SandboxState.QUEUED.value,
            )
        )
    need = sandboxes.needs(spec)
    svc.redis.hset(protocol.sandbox_state_key(sandbox_id), mapping={"state": SandboxState.QUEUED.value})
    svc.pending.set_needs(sandbox_id, need)
    try:
        svc.pending.enqueue(g.user.id, PendingEntry(sandbox_id, sandbox_id, 0, 1))
    except Exception as exc:
        sandboxes.end(svc.db, svc.redis, sandbox_id, SandboxState.FAILED, None, str(exc))
        raise
    return {"sandbox_id": sandbox_id, "state": SandboxState.QUEUED.value}, 201


def _image_tag(session: Any, image_id: str | None) -> str:
    if image_id is None:
        raise InvalidError("image: give the id of a built image (the SDK registers one, by default debian_slim)")
    image = session.get(ImageRecord, image_id)
    if image is None:
        raise NotFoundError(f"image {image_id} does not exist; register it with POST /v1/images")
    if image.status == protocol.ImageStatus.PROCESS.value:
        raise InvalidError("sandboxes run in containers, and no worker here has a Docker engine")
    if image.status != protocol.ImageStatus.READY.value or not image.tag:
        raise InvalidError(f"image {image_id} is {image.status}, not built: {image.error or 'wait for its build'}")
    return image.tag


@bp.get("")
def list_sandboxes():  # type: ignore[no-untyped-def]
    """The user's sandboxes, newest first: ``?app_id=``, ``?tag=key=value`` (repeatable), ``?state=``."""
    svc = services()
    query = select(SandboxRecord).where(SandboxRecord.user_id == g.user.id)
    if request.args.get("app_id"):
        query = query.where(SandboxRecord.app_id == request.args["app_id"])
    if request.args.get("state") == "running":
        query = query.where(SandboxRecord.state.in_([SandboxState.QUEUED.value, SandboxState.RUNNING.value]))
    wanted = dict(t.partition("=")[::2] for t in request.args.getlist("tag"))
    with svc.db.read() as session:
        records = list(session.scalars(query.order_by(SandboxRecord.created_at.desc()).limit(1000)))
        for r in records:
            session.expunge(r)
    records = [r for r in records if all((r.tags or {}).get(k) == v for k, v in wanted.items())]
    return {"sandboxes": [sandboxes.view(r, sandboxes.live_state(svc.redis, r.id)) for r in records]}


@bp.get("/<sandbox_id>")
def get_sandbox(sandbox_id: str):  # type: ignore[no-untyped-def]
    """The sandbox's state; ``?wait=`` long-polls until it ends (``?until=running``: until it started)."""
    record = _record(sandbox_id)
    svc = services()
    wait = _wait_arg("wait")
    until = request.args.get("until", "ended")
    deadline = time.monotonic() + wait
    while True:
        live = sandboxes.live_state(svc.redis, sandbox_id)
        state = SandboxState(live.get("state") or record.state)
        if state.terminal or (until == "running" and state != SandboxState.QUEUED) or time.monotonic() >= deadline:
            break
        left = deadline - time.monotonic()
        if until == "running":
            time.sleep(min(0.05, left))
        else:
            svc.redis.xread({protocol.sandbox_events_key(sandbox_id): "$"}, block=max(1, int(min(left, 1.0) * 1000)))
    if state.terminal:
        record = _record(sandbox_id)
    return sandboxes.view(record, live)


@bp.post("/<sandbox_id>/tags")
def set_tags(sandbox_id: str):  # type: ignore[no-untyped-def]
    tags = _tags(json_body("tags").get("tags"))
    with services().db.write() as session:
        owned_record = session.get(SandboxRecord, _own(session, sandbox_id).id)
        assert owned_record is not None
        owned_record.tags = tags
    return {"sandbox_id": sandbox_id, "tags": tags}


@bp.post("/<sandbox_id>/terminate")
def terminate(sandbox_id: str):  # type: ignore[no-untyped-def]
    _record(sandbox_id)
    svc = services()
    sandboxes.request_terminate(svc.db, svc.redis, sandbox_id)
    return {"sandbox_id": sandbox_id}


def _running(sandbox_id: str) -> None:
    """Refuse an operation on a sandbox that has ended (one still queued takes it when it starts)."""
    record = _record(sandbox_id)
    state = SandboxState(sandboxes.live_state(services().redis, sandbox_id).get("state") or record.state)
    if state.terminal:
        raise SandboxTerminatedError(f"sandbox {sandbox_id} has ended ({state.value})")


@bp.post("/<sandbox_id>/exec")
def exec_process(sandbox_id: str):  # type: ignore[no-untyped-def]
    body = json_body("cmd", "workdir", "timeout", "secrets", "pty")
    cmd = _strings(body.get("cmd"), "cmd")
    if not cmd:
        raise InvalidError("exec needs a command")
    workdir = field(body, "workdir", str, required=False)
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidError(f"workdir={workdir!r} must be an absolute path")
    timeout = _number(body, "timeout", low=0.001, high=defaults.MAX_SANDBOX_TIMEOUT)
    _running(sandbox_id)
    svc = services()
    secret_ids: list[str] = []
    if body.get("secrets"):
        with svc.db.write() as session:
            secret_ids = vault.attach(session, g.user.id, "exec", field(body, "secrets", list))
    process_id = protocol.new_id("sp")
    message = {
        "op": "exec",
        "proc": process_id,
        "cmd": cmd,
        "workdir": workdir,
        "timeout": timeout,
        "secrets": secret_ids,
        "pty": bool(body.get("pty", False)),
    }
    key = protocol.sandbox_control_key(sandbox_id)
    pipe = svc.redis.pipeline(transaction=False)
    pipe.rpush(key, json.dumps(message))
    pipe.expire(key, defaults.MAX_SANDBOX_TIMEOUT)
    pipe.execute()
    return {"process_id": process_id}, 201


def _process_id(process_id: str) -> str:
    if process_id != protocol.SANDBOX_ENTRYPOINT and not process_id.startswith("sp-"):
        raise NotFoundError(f"process {process_id} does not exist")
    return process_id


@bp.get("/<sandbox_id>/processes/<process_id>/output")
def read_output(sandbox_id: str, process_id: str):  # type: ignore[no-untyped-def]
    """A process's stdout (``fd=1``) or stderr (``fd=2``) after ``cursor``, waiting up to ``timeout`` s.

    ``eof`` is true once the stream has ended (the process ended, or the sandbox with it).
    """
    record = _record(sandbox_id)
    process_id = _process_id(process_id)
    fd = request.args.get("fd", "1")
    if fd not in ("1", "2"):
        raise InvalidError("fd must be 1 (stdout) or 2 (stderr)")
    cursor = request.args.get("cursor", "0-0")
    if not _CURSOR.match(cursor):
        raise InvalidError("cursor must look like '<ms>-<seq>' (use the cursor of the previous reply)")
    svc = services()
    key = protocol.sandbox_output_key(sandbox_id, process_id, int(fd))
    wait = _wait_arg()
    deadline = time.monotonic() + wait
    chunks: list[str] = []
    eof = False
    while True:
        block = max(1, int(min(1.0, max(0.0, deadline - time.monotonic())) * 1000)) if wait else None
        reply = svc.redis.xread({key: cursor}, count=MAX_CHUNKS, block=block)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id.decode()
                if b"eof" in fields:
                    eof = True
                    break
                chunks.append(base64.b64encode(fields[b"d"]).decode())
        if chunks or eof:
            break
        last = svc.redis.xrevrange(key, count=1)
        if last and b"eof" in last[0][1]:
            eof = True  # the cursor is at the end already (a client that reconnects after reading it all)
            break
        state = SandboxState(sandboxes.live_state(svc.redis, sandbox_id).get("state") or record.state)
        if state.terminal and not svc.redis.exists(key):
            eof = True  # the sandbox ended before this process wrote anything (or its output expired)
            break
        if time.monotonic() >= deadline:
            break
    return {"chunks": chunks, "cursor": cursor, "eof": eof}


@bp.post("/<sandbox_id>/processes/<process_id>/stdin")
def write_stdin(sandbox_id: str, process_id: str):  # type: ignore[no-untyped-def]
    """Append to a process's stdin: ``{"data": base64}``, and/or ``{"eof": true}`` to close it."""
    body = json_body("data", "eof")
    _running(sandbox_id)
    process_id = _process_id(process_id)
    try:
        data = base64.b64decode(field(body, "data", str, required=False, default=""), validate=True)
    except ValueError:
        raise InvalidError("data must be base64") from None
    key = protocol.sandbox_stdin_key(sandbox_id, process_id)
    pipe = services().redis.pipeline(transaction=False)
    if data:
        pipe.rpush(key, data)
    if body.get("eof"):
        pipe.rpush(key, b"")
    pipe.expire(key, defaults.MAX_SANDBOX_TIMEOUT)
    pipe.execute()
    return {"written": len(data)}


@bp.get("/<sandbox_id>/processes/<process_id>")
def get_process(sandbox_id: str, process_id: str):  # type: ignore[no-untyped-def]
    """A process's ``returncode`` (null while it runs); ``?wait=`` long-polls for its end."""
    record = _record(sandbox_id)
    process_id = _process_id(process_id)
    svc = services()
    key = protocol.sandbox_events_key(sandbox_id)
    deadline = time.monotonic() + _wait_arg("wait")
    cursor = "0-0"
    while True:
        block = max(1, int(min(1.0, max(0.0, deadline - time.monotonic())) * 1000))
        for _, entries in svc.redis.xread({key: cursor}, block=block) or []:
            for entry_id, fields in entries:
                cursor = entry_id.decode()
                proc = fields.get(b"proc", b"").decode()
                code = fields.get(b"returncode", b"").decode()
                if proc == process_id or (proc == "" and process_id == protocol.SANDBOX_ENTRYPOINT):
                    return {"process_id": process_id, "returncode": int(code) if code else None, "done": True}
                if proc == "":  # the sandbox ended: every process in it ended too
                    return {"process_id": process_id, "returncode": sandboxes.TERMINATED_CODE, "done": True}
        if SandboxState(sandboxes.live_state(svc.redis, sandbox_id).get("state") or record.state).terminal:
            code = record.returncode if process_id == protocol.SANDBOX_ENTRYPOINT else sandboxes.TERMINATED_CODE
            return {"process_id": process_id, "returncode": code, "done": True}
        if time.monotonic() >= deadline:
            return {"process_id": process_id, "returncode": None, "done": False}


@bp.post("/<sandbox_id>/snapshot")
def snapshot(sandbox_id: str):  # type: ignore[no-untyped-def]
    """Commit the sandbox's file system as an image; answer its tag (``Image.from_registry`` uses it)."""
    _running(sandbox_id)
    svc = services()
    if sandboxes.live_state(svc.redis, sandbox_id).get("state") != SandboxState.RUNNING.value:
        raise InvalidError(f"sandbox {sandbox_id} has not started yet; snapshot it once it runs")
    request_id = protocol.new_id("rq")
    svc.redis.rpush(protocol.sandbox_control_key(sandbox_id), json.dumps({"op": "snapshot", "id": request_id}))
    popped = svc.redis.blpop([protocol.sandbox_reply_key(sandbox_id, request_id)], timeout=120)
    if popped is None:
        raise ServiceError(f"the worker of sandbox {sandbox_id} did not answer the snapshot within 120 s")
    reply = json.loads(popped[1])
    if "error" in reply:
        raise ServiceError(reply["error"])
    return {"image": reply["image"]}, 201


def openapi_paths() -> dict[str, Any]:
    """This blueprint's part of ``/openapi.json``."""
    from .openapi import _int, _num, _obj, _op, _path, _query, _str

    sb = _path("sandbox_id", "sandbox id (sb-...)")
    proc = _path("process_id", "process id (sp-...), or ep for the entrypoint")
    strings = {"type": "array", "items": _str()}
    tags = {"type": "object", "additionalProperties": _str()}
    view = _obj(
        {
            "sandbox_id": _str(),
            "app_id": {"type": ["string", "null"]},
            "state": _str(enum=[s.value for s in SandboxState]),
            "returncode": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "worker": {"type": ["string", "null"]},
            "tags": tags,
            "command": strings,
            "tunnels": {
                "type": "object",
                "description": "container port -> {encrypted}; an unencrypted one also {host, port} on the worker",
                "additionalProperties": {"type": "object"},
            },
        }
    )
    create = _obj(
        {
            "cmd": strings,
            "image": _str("id of a built image (POST /v1/images)"),
            "app_id": _str(),
            "secrets": {"type": "array", "items": {"type": "object"}},
            "volumes": {"type": "object", "additionalProperties": _str(), "description": "path -> volume id"},
            "workdir": _str(),
            "timeout": _num("seconds until it is ended (default 300)"),
            "idle_timeout": _num("seconds without exec or stdin activity until it is ended"),
            "cpu": _num(),
            "memory": _int("MiB"),
            "gpu": _str(),
            "block_network": {"type": "boolean"},
            "encrypted_ports": {"type": "array", "items": _int(), "description": "served at .../tunnels/{port}/"},
            "unencrypted_ports": {"type": "array", "items": _int(), "description": "also published on the worker"},
            "tags": tags,
        },
        ["image"],
    )
    return {
        "/v1/sandboxes": {
            "post": _op(
                "Create a sandbox: it is queued like a call and runs on a Docker worker",
                "sandboxes",
                ok="201",
                body=create,
                reply=_obj({"sandbox_id": _str(), "state": _str()}),
                errors=("400", "404"),
            ),
            "get": _op(
                "The user's sandboxes, newest first",
                "sandboxes",
                params=[
                    _query("app_id", "only this app's"),
                    _query("tag", "key=value; repeat for several"),
                    _query("state", "running: only those queued or running"),
                ],
                reply=_obj({"sandboxes": {"type": "array", "items": view}}),
            ),
        },
        "/v1/sandboxes/{sandbox_id}": {
            "get": _op(
                "A sandbox's state; wait long-polls for its end (until=running: for its start)",
                "sandboxes",
                params=[sb, _query("wait", "seconds to wait", _num()), _query("until", "ended or running")],
                reply=view,
                errors=("404",),
            )
        },
        "/v1/sandboxes/{sandbox_id}/tags": {
            "post": _op(
                "Replace a sandbox's tags",
                "sandboxes",
                params=[sb],
                body=_obj({"tags": tags}, ["tags"]),
                reply=_obj({"sandbox_id": _str(), "tags": tags}),
                errors=("404",),
            )
        },
        "/v1/sandboxes/{sandbox_id}/terminate": {
            "post": _op(
                "End a sandbox now", "sandboxes", params=[sb], reply=_obj({"sandbox_id": _str()}), errors=("404",)
            )
        },
        "/v1/sandboxes/{sandbox_id}/exec": {
            "post": _op(
                "Run a command in the sandbox; read its output from its process",
                "sandboxes",
                ok="201",
                params=[sb],
                body=_obj(
                    {
                        "cmd": strings,
                        "workdir": _str(),
                        "timeout": _num(),
                        "secrets": {"type": "array", "items": {"type": "object"}},
                        "pty": {"type": "boolean"},
                    },
                    ["cmd"],
                ),
                reply=_obj({"process_id": _str()}),
                errors=("404", "409"),
            )
        },
        "/v1/sandboxes/{sandbox_id}/processes/{process_id}": {
            "get": _op(
                "A process's returncode (null while it runs); wait long-polls for its end",
                "sandboxes",
                params=[sb, proc, _query("wait", "seconds to wait", _num())],
                reply=_obj(
                    {"process_id": _str(), "returncode": {"type": ["integer", "null"]}, "done": {"type": "boolean"}}
                ),
                errors=("404",),
            )
        },
        "/v1/sandboxes/{sandbox_id}/processes/{process_id}/output": {
            "get": _op(
                "A process's stdout or stderr chunks after a cursor (long-poll); eof once it ended",
                "sandboxes",
                params=[
                    sb,
                    proc,
                    _query("fd", "1 stdout, 2 stderr"),
                    _query("cursor", "cursor of the previous reply; 0-0 from the start"),
                    _query("timeout", "seconds to wait for the first chunk", _num()),
                ],
                reply=_obj(
                    {"chunks": {"type": "array", "items": _str("base64")}, "cursor": _str(), "eof": {"type": "boolean"}}
                ),
                errors=("404",),
            )
        },
        "/v1/sandboxes/{sandbox_id}/processes/{process_id}/stdin": {
            "post": _op(
                "Append to a process's stdin (base64), or close it with eof",
                "sandboxes",
                params=[sb, proc],
                body=_obj({"data": _str("base64"), "eof": {"type": "boolean"}}),
                reply=_obj({"written": _int()}),
                errors=("404", "409"),
            )
        },
        "/v1/sandboxes/{sandbox_id}/snapshot": {
            "post": _op(
                "Commit the sandbox's file system as an image (its tag, for Image.from_registry)",
                "sandboxes",
                ok="201",
                params=[sb],
                reply=_obj({"image": _str()}),
                errors=("404", "409", "503"),
            )
        },
    }
