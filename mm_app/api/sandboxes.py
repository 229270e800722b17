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
from typing import Annotated, Any, Literal

from flask import Blueprint, g
from pydantic import Field
from sqlalchemy import select

from minimodal import defaults, protocol
from minimodal.exception import InvalidError, NotFoundError, SandboxTerminatedError, ServiceError
from minimodal.protocol import PendingEntry, SandboxState

from .. import objects, sandboxes, vault
from ..models import AppRecord, ImageRecord, SandboxRecord
from ..ownership import owned
from .auth import authenticate
from .schema import Body, Doc, Query, Reply
from .services import services

bp = Blueprint("sandboxes", __name__, url_prefix="/v1/sandboxes")
bp.before_request(authenticate)

MAX_WAIT = 30.0  # seconds one long-poll may block
MAX_CHUNKS = 1000  # stream entries one output read returns
_CURSOR = re.compile(r"^\d+-\d+$")
doc = Doc("sandboxes")
Tags = dict[str, str]
Port = Annotated[int, Field(ge=1, le=65535)]  # a TCP port number


class NewSandbox(Body):
    cmd: list[str] = []
    image: str | None = Field(None, description="id of a built image (POST /v1/images)")
    app_id: str | None = None
    secrets: list[Any] | None = None
    volumes: dict[str, str] = Field({}, description="path -> volume id")
    workdir: str | None = None
    timeout: float | None = Field(None, description="seconds until it is ended (default 300)")
    idle_timeout: float | None = Field(None, description="seconds without exec or stdin activity until it is ended")
    cpu: float | None = None
    memory: float | None = Field(None, description="MiB")
    gpu: str | None = None
    block_network: bool = False
    encrypted_ports: list[Port] = Field([], description="served at .../tunnels/{port}/")
    unencrypted_ports: list[Port] = Field([], description="also published on the worker")
    tags: Tags | None = None


class SandboxCreated(Reply):
    sandbox_id: str
    state: str


class SandboxView(Reply):
    sandbox_id: str
    app_id: str | None
    state: SandboxState
    returncode: int | None
    error: str | None
    worker: str | None
    tags: Tags
    command: list[str]
    tunnels: dict[str, dict[str, Any]] = Field(
        description="container port -> {encrypted}; an unencrypted one also {host, port} on the worker"
    )


class Sandboxes(Reply):
    sandboxes: list[SandboxView]


class Filter(Query):
    app_id: str = Field("", description="only this app's")
    tag: list[str] = Field([], description="key=value; repeat for several")
    state: str = Field("", description="running: only those queued or running")


class Wait(Query):
    wait: float = Field(0, description=f"seconds to wait (at most {MAX_WAIT:g})")


class WaitUntil(Wait):
    until: Literal["ended", "running"] = Field("ended", description="ended or running")


class NewTags(Body):
    tags: Tags


class TagsSet(Reply):
    sandbox_id: str
    tags: Tags


class Terminated(Reply):
    sandbox_id: str


class NewProcess(Body):
    cmd: list[str]
    workdir: str | None = None
    timeout: float | None = None
    secrets: list[Any] | None = None
    pty: bool = False


class ProcessStarted(Reply):
    process_id: str


class ProcessView(Reply):
    process_id: str
    returncode: int | None
    done: bool


class OutputAfter(Query):
    fd: Literal["1", "2"] = Field("1", description="1 stdout, 2 stderr")
    cursor: str = Field("0-0", pattern=_CURSOR.pattern, description="cursor of the previous reply; 0-0 from the start")
    timeout: float = Field(0, description="seconds to wait for the first chunk")


class Output(Reply):
    chunks: list[str] = Field(description="base64")
    cursor: str
    eof: bool


class Stdin(Body):
    data: str = Field("", description="base64")
    eof: bool = False


class StdinWritten(Reply):
    written: int


class Snapshot(Reply):
    image: str


def _own(session: Any, sandbox_id: str) -> SandboxRecord:
    record = owned(session, SandboxRecord, sandbox_id, g.user.id, "sandbox")
    session.expunge(record)
    return record


def _record(sandbox_id: str) -> SandboxRecord:
    with services().db.read() as session:
        return _own(session, sandbox_id)


def _clamped(seconds: float) -> float:
    return max(0.0, min(MAX_WAIT, seconds))


def _number(value: float | None, name: str, *, low: float, high: float) -> float | None:
    if value is None:
        return None
    if not low <= value <= high:
        raise InvalidError(f"{name} must be a number from {low:g} to {high:g}")
    return value


def _ports(value: list[int]) -> list[int]:
    return sorted(set(value))


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidError('tags must be an object of strings, e.g. {"purpose": "eval"}')
    return dict(value)


@bp.post("")
@doc(
    "Create a sandbox: it is queued like a call and runs on a Docker worker",
    body=NewSandbox,
    reply=SandboxCreated,
    ok=201,
    errors=(404,),
)
def create_sandbox(body: NewSandbox):  # type: ignore[no-untyped-def]
    cmd = body.cmd
    timeout = _number(body.timeout, "timeout", low=1, high=defaults.MAX_SANDBOX_TIMEOUT)
    timeout = timeout or defaults.DEFAULT_SANDBOX_TIMEOUT
    idle_timeout = _number(body.idle_timeout, "idle_timeout", low=1, high=defaults.MAX_SANDBOX_TIMEOUT)
    cpu = _number(body.cpu, "cpu", low=0.001, high=1024)
    memory = _number(body.memory, "memory", low=1, high=1 << 22)
    workdir = body.workdir
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidError(f"workdir={workdir!r} must be an absolute path")
    try:
        protocol.parse_gpu(body.gpu)
    except ValueError as exc:
        raise InvalidError(f"gpu: {exc}") from None
    encrypted, unencrypted = _ports(body.encrypted_ports), _ports(body.unencrypted_ports)
    if (encrypted or unencrypted) and body.block_network:
        raise InvalidError("block_network=True takes no encrypted_ports or unencrypted_ports: nothing could reach them")
    svc = services()
    volumes = body.volumes
    mounted = {}
    for path, volume_id in volumes.items():
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(volume_id, str):
            raise InvalidError('volumes must map absolute paths to volume ids: {"/data": "vo-..."}')
        mounted[path] = objects.resolve(svc.redis, g.user.id, {"kind": "volume", "id": volume_id})
    sandbox_id = protocol.new_id("sb")
    with svc.db.write() as session:
        app_id = body.app_id
        if app_id is not None:
            app = owned(session, AppRecord, app_id, g.user.id, "app")
            if app.state in ("stopped", "replaced"):
                raise InvalidError(f"app {app_id} is {app.state}; sandboxes need a running app")
        image_tag = _image_tag(session, body.image)
        secret_ids = vault.attach(session, g.user.id, "sandbox", body.secrets or [])
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
            "gpu": body.gpu,
            "block_network": body.block_network,
            "encrypted_ports": encrypted,
            "unencrypted_ports": unencrypted,
        }
        session.add(
            SandboxRecord(
                id=sandbox_id,
                user_id=g.user.id,
                app_id=app_id,
                spec=spec,
                tags=_tags(body.tags or {}),
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
@doc("The user's sandboxes, newest first", query=Filter, reply=Sandboxes)
def list_sandboxes(query: Filter):  # type: ignore[no-untyped-def]
    """The user's sandboxes, newest first: ``?app_id=``, ``?tag=key=value`` (repeatable), ``?state=``."""
    svc = services()
    selected = select(SandboxRecord).where(SandboxRecord.user_id == g.user.id)
    if query.app_id:
        selected = selected.where(SandboxRecord.app_id == query.app_id)
    if query.state == "running":
        selected = selected.where(SandboxRecord.state.in_([SandboxState.QUEUED.value, SandboxState.RUNNING.value]))
    wanted = dict(t.partition("=")[::2] for t in query.tag)
    with svc.db.read() as session:
        records = list(session.scalars(selected.order_by(SandboxRecord.created_at.desc()).limit(1000)))
        for r in records:
            session.expunge(r)
    records = [r for r in records if all((r.tags or {}).get(k) == v for k, v in wanted.items())]
    return {"sandboxes": [sandboxes.view(r, sandboxes.live_state(svc.redis, r.id)) for r in records]}


@bp.get("/<sandbox_id>")
@doc(
    "A sandbox's state; wait long-polls for its end (until=running: for its start)",
    query=WaitUntil,
    reply=SandboxView,
    errors=(404,),
)
def get_sandbox(sandbox_id: str, query: WaitUntil):  # type: ignore[no-untyped-def]
    """The sandbox's state; ``?wait=`` long-polls until it ends (``?until=running``: until it started)."""
    record = _record(sandbox_id)
    svc = services()
    wait = _clamped(query.wait)
    until = query.until
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
@doc("Replace a sandbox's tags", body=NewTags, reply=TagsSet, errors=(404,))
def set_tags(sandbox_id: str, body: NewTags):  # type: ignore[no-untyped-def]
    tags = body.tags
    with services().db.write() as session:
        owned_record = session.get(SandboxRecord, _own(session, sandbox_id).id)
        assert owned_record is not None
        owned_record.tags = tags
    return {"sandbox_id": sandbox_id, "tags": tags}


@bp.post("/<sandbox_id>/terminate")
@doc("End a sandbox now", reply=Terminated, errors=(404,))
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
@doc(
    "Run a command in the sandbox; read its output from its process",
    body=NewProcess,
    reply=ProcessStarted,
    ok=201,
    errors=(404, 409),
)
def exec_process(sandbox_id: str, body: NewProcess):  # type: ignore[no-untyped-def]
    cmd = body.cmd
    if not cmd:
        raise InvalidError("exec needs a command")
    workdir = body.workdir
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidError(f"workdir={workdir!r} must be an absolute path")
    timeout = _number(body.timeout, "timeout", low=0.001, high=defaults.MAX_SANDBOX_TIMEOUT)
    _running(sandbox_id)
    svc = services()
    secret_ids: list[str] = []
    if body.secrets:
        with svc.db.write() as session:
            secret_ids = vault.attach(session, g.user.id, "exec", body.secrets)
    process_id = protocol.new_id("sp")
    message = {
        "op": "exec",
        "proc": process_id,
        "cmd": cmd,
        "workdir": workdir,
        "timeout": timeout,
        "secrets": secret_ids,
        "pty": body.pty,
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
@doc(
    "A process's stdout or stderr chunks after a cursor (long-poll); eof once it ended",
    query=OutputAfter,
    reply=Output,
    errors=(404,),
)
def read_output(sandbox_id: str, process_id: str, query: OutputAfter):  # type: ignore[no-untyped-def]
    """A process's stdout (``fd=1``) or stderr (``fd=2``) after ``cursor``, waiting up to ``timeout`` s.

    ``eof`` is true once the stream has ended (the process ended, or the sandbox with it).
    """
    record = _record(sandbox_id)
    process_id = _process_id(process_id)
    fd, cursor = query.fd, query.cursor
    svc = services()
    key = protocol.sandbox_output_key(sandbox_id, process_id, int(fd))
    wait = _clamped(query.timeout)
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
@doc("Append to a process's stdin (base64), or close it with eof", body=Stdin, reply=StdinWritten, errors=(404, 409))
def write_stdin(sandbox_id: str, process_id: str, body: Stdin):  # type: ignore[no-untyped-def]
    """Append to a process's stdin: ``{"data": base64}``, and/or ``{"eof": true}`` to close it."""
    _running(sandbox_id)
    process_id = _process_id(process_id)
    try:
        data = base64.b64decode(body.data, validate=True)
    except ValueError:
        raise InvalidError("data must be base64") from None
    key = protocol.sandbox_stdin_key(sandbox_id, process_id)
    pipe = services().redis.pipeline(transaction=False)
    if data:
        pipe.rpush(key, data)
    if body.eof:
        pipe.rpush(key, b"")
    pipe.expire(key, defaults.MAX_SANDBOX_TIMEOUT)
    pipe.execute()
    return {"written": len(data)}


@bp.get("/<sandbox_id>/processes/<process_id>")
@doc(
    "A process's returncode (null while it runs); wait long-polls for its end",
    query=Wait,
    reply=ProcessView,
    errors=(404,),
)
def get_process(sandbox_id: str, process_id: str, query: Wait):  # type: ignore[no-untyped-def]
    """A process's ``returncode`` (null while it runs); ``?wait=`` long-polls for its end."""
    record = _record(sandbox_id)
    process_id = _process_id(process_id)
    svc = services()
    key = protocol.sandbox_events_key(sandbox_id)
    deadline = time.monotonic() + _clamped(query.wait)
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
@doc(
    "Commit the sandbox's file system as an image (its tag, for Image.from_registry)",
    reply=Snapshot,
    ok=201,
    errors=(404, 409, 503),
)
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
