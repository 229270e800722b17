"""Apps and their functions: ``POST /v1/apps`` stores every function's code and options in one request."""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from typing import Any

from flask import Blueprint, g, request
from pydantic import Field, ValidationError
from sqlalchemy import select

from minimodal import protocol
from minimodal.exception import InvalidError, NotFoundError
from minimodal.protocol import ImageStatus

from .. import objects, sandboxes, vault
from ..cancel import cancel_calls
from ..models import AppRecord, CallRecord, FunctionRecord, FunctionSpecRecord, ImageRecord, SourceFileRecord, utcnow
from ..ownership import owned
from ..registry import check_gpu_option, needs_of, task_limit
from ..volumes import check_mount_path
from .auth import authenticate
from .schema import Body, Doc, Int, Reply, Timestamp, invalid
from .services import services

bp = Blueprint("apps", __name__, url_prefix="/v1")
bp.before_request(authenticate)

doc = Doc("apps")


class Options(Body):
    """A function's options the workers act on. Anything else is refused, never ignored."""

    cpu: float | None = None
    memory: Int | None = None
    timeout: Int | None = None
    scaledown_window: Int | None = None
    min_containers: Int | None = None
    retries: dict[str, Any] | None = None
    max_containers: Int | None = None
    buffer_containers: Int | None = None
    gpu: str | None = None  # "T4", "A100:2", "any": placement only (see mm_app/registry.py)
    block_network: bool | None = None  # the runner's container gets network_mode=none
    container_runtime: str | None = None  # "runc" or "runsc": placed only on a worker whose containers run under it
    volumes: dict[str, str] | None = None  # mount path -> volume id (vo-...) of the user
    concurrent_inputs: Int | None = None  # @minimodal.concurrent(max_inputs=): inputs one runner takes at once
    batch_max_size: Int | None = None  # @minimodal.batched(max_batch_size=, wait_ms=)
    batch_wait_ms: Int | None = None


class FunctionDef(Body):
    tag: str
    code: str = Field(description="base64 cloudpickle of the function")
    options: dict[str, Any] | None = Field(None, description="see parse_options")
    image: str | None = None
    spec: dict[str, Any] | None = None
    secrets: list[Any] | None = None


class NewApp(Body):
    name: str | None = None
    functions: list[FunctionDef] = []

    def specs(self) -> list[dict[str, Any]]:
        """The functions as sent (fields given only), for :func:`register_app`."""
        return [f.model_dump(exclude_unset=True) for f in self.functions]


class AppCreated(Reply):
    app_id: str
    functions: dict[str, str]
    web_urls: dict[str, str]


class AppView(Reply):
    app_id: str
    name: str
    state: str = Field(description="ephemeral, deployed, replaced (by a newer version) or stopped")
    created_at: Timestamp
    stopped_at: Timestamp | None
    functions: list[str]


class Apps(Reply):
    apps: list[AppView]


class AppStopped(Reply):
    app_id: str
    state: str


class FunctionView(Reply):
    function_id: str
    app_id: str
    tag: str
    options: dict[str, Any]


_MAY_BE_ZERO = {"min_containers", "buffer_containers", "batch_wait_ms"}
_AT_MOST = {"concurrent_inputs": 1000, "batch_max_size": 1000, "batch_wait_ms": 600_000}  # as sdk/concurrency.py


_RETRY_LIMITS = {
    "max_retries": (0, 10),
    "backoff_coefficient": (1.0, 10.0),
    "initial_delay": (0.0, 60.0),
    "max_delay": (1.0, 60.0),
}


def _parse_retries(tag: str, raw: dict[str, Any]) -> dict[str, float]:
    """The retry policy (Retries.to_json()); every delay stays far below the broker's visibility timeout."""
    if set(raw) != set(_RETRY_LIMITS):
        raise InvalidError(f"function {tag!r}: retries needs exactly {sorted(_RETRY_LIMITS)}")
    for name, (low, high) in _RETRY_LIMITS.items():
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise InvalidError(f"function {tag!r}: retries.{name} must be a number from {low} to {high}")
    return {name: raw[name] for name in _RETRY_LIMITS}


def parse_options(tag: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidError(f"function {tag!r}: options must be an object")
    unknown = sorted(set(raw) - set(Options.model_fields))
    if unknown:
        raise InvalidError(f"function {tag!r}: unknown options {unknown}; known: {sorted(Options.model_fields)}")
    try:
        options = Options.model_validate(raw).model_dump()
    except ValidationError as exc:
        raise InvalidError(f"function {tag!r} options: {invalid(exc, Options)}") from None
    if options.get("retries") is not None:
        options["retries"] = _parse_retries(tag, options["retries"])
    if options.get("gpu") is not None:
        options["gpu"] = check_gpu_option(tag, options["gpu"])
    if options.get("volumes") is not None:
        options["volumes"] = _parse_volumes(options["volumes"])
    if options.get("container_runtime") not in (None, "runc", "runsc"):
        raise InvalidError(f"function {tag!r}: container_runtime must be 'runc' or 'runsc' (gVisor)")
    for name, most in _AT_MOST.items():
        if options.get(name) is not None and options[name] > most:
            raise InvalidError(f"function {tag!r}: option {name} must be at most {most}")
    for name, value in options.items():
        if name in ("retries", "gpu", "block_network", "volumes", "container_runtime"):
            continue
        if value is not None and (value < 0 or (value == 0 and name not in _MAY_BE_ZERO)):
            raise InvalidError(
                f"function {tag!r}: option {name} must be " + ("0 or more" if name in _MAY_BE_ZERO else "positive")
            )
    return {k: v for k, v in options.items() if v is not None}


def _parse_volumes(raw: dict[str, Any]) -> dict[str, str]:
    """Mount path -> volume id, each volume the user's own (another user's is 404, as if missing)."""
    mounts = {}
    for path, volume_id in raw.items():
        request = {"kind": "volume", "id": volume_id}
        mounts[check_mount_path(path)] = objects.resolve(services().redis, g.user.id, request)
    return mounts


def _parse_code(tag: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidError(f"function {tag!r}: code must be a base64 string")
    try:
        code = protocol.unb64(text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidError(f"function {tag!r}: code is not valid base64") from exc
    if not protocol.looks_like_pickle(code):
        raise InvalidError(f"function {tag!r}: code is not a pickle (expected a protocol 2-5 header)")
    return code


@bp.post("/apps")
@doc(
    "Create an app with its functions (code is a base64 cloudpickle)",
    body=NewApp,
    reply=AppCreated,
    ok=201,
    errors=(404,),
)
def create_app_record(body: NewApp):  # type: ignore[no-untyped-def]
    specs = body.specs()
    app_id, ids = register_app(body.name, specs)
    webs = {}
    scheduled = False
    for spec in specs:
        extra = spec.get("spec") or {}
        if extra.get("web"):
            webs[spec["tag"]] = web_url(g.user.name, app_id, spec["tag"])  # live while the app runs
        scheduled = scheduled or bool(extra.get("schedule"))
    if scheduled:
        after_change(g.user.id)  # an ephemeral app runs its schedules while it lives
    return {"app_id": app_id, "functions": ids, "web_urls": webs}, 201


def register_app(
    name: str | None, specs: list[Any], *, state: str = "ephemeral", before_commit: Any = None
) -> tuple[str, dict[str, str]]:
    """Store a new app with its functions (and each one's ``spec``: kind, web, schedule); return its ids.

    ``before_commit(session, app_id, records)`` runs in the same transaction (a deploy switches its
    current version there, so that lookups see the old version or the new one, never a mix).
    """
    app_id = protocol.new_id("ap")
    records, ids, extras = [], {}, {}
    secrets: dict[str, list] = {}  # tag -> its secrets as sent ({"name"} or {"values"}), stored below
    svc = services()
    for spec in specs:
        tag = spec["tag"]  # validated by FunctionDef
        if tag in ids:
            raise InvalidError(f"function tag {tag!r} appears twice")
        code = _parse_code(tag, spec.get("code"))
        options = parse_options(tag, spec.get("options"))
        code_hash = hashlib.sha256(code + json.dumps(options, sort_keys=True).encode()).hexdigest()
        image_id = spec.get("image")
        secrets[tag] = spec.get("secrets") or []
        ids[tag] = protocol.new_id("fu")
        extras[ids[tag]] = parse_spec(tag, spec.get("spec"))
        records.append(
            FunctionRecord(
                id=ids[tag],
                app_id=app_id,
                user_id=g.user.id,
                tag=tag,
                code=code,
                code_hash=code_hash,
                options=options,
                image_id=image_id,
            )
        )
    shas = {sha for extra in extras.values() for sha in (extra.get("source") or {}).get("files", {}).values()}
    with svc.db.write() as session:
        _pin_source_files(session, shas)
        for record in records:
            _attach_image(session, record)
            if record.options.get("container_runtime") and record.queue != protocol.QUEUE_CONTAINER:
                raise InvalidError(
                    f"function {record.tag!r} asks for the container runtime {record.options['container_runtime']}, "
                    "but its image runs in runner processes: start a worker with Docker first"
                )
            if secrets[record.tag]:  # a named secret that does not exist fails the deploy, naming it
                record.options = {
                    **record.options,
                    "secrets": vault.attach(session, g.user.id, record.tag, secrets[record.tag]),
                }
        session.add(AppRecord(id=app_id, user_id=g.user.id, name=name, state=state))
        session.flush()
        session.add_all(records)
        session.flush()
        session.add_all(FunctionSpecRecord(function_id=f, spec=extra) for f, extra in extras.items() if extra)
        if before_commit is not None:
            before_commit(session, app_id, records)
    if records:
        svc.pending.register_functions(
            {r.id: r.queue for r in records},
            limits={r.id: task_limit(r.options) for r in records if r.options.get("max_containers")},
            warm={r.id: r.options["min_containers"] for r in records if r.options.get("min_containers")},
            needs={r.id: needs_of(r.options, r.queue) for r in records},  # what the scheduler places
        )
    return app_id, ids


MAX_SPEC_BYTES = 256 * 1024  # a source manifest names every file of the app's local package
_SHA = re.compile(r"^[0-9a-f]{64}$")


def parse_spec(tag: str, raw: Any) -> dict[str, Any]:
    """A function's ``spec``: what callers by name and the web/schedule services need (small JSON object)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(json.dumps(raw)) > MAX_SPEC_BYTES:
        raise InvalidError(f"function {tag!r}: spec must be a JSON object under {MAX_SPEC_BYTES} bytes")
    source = raw.get("source")
    if source is not None:
        files = source.get("files") if isinstance(source, dict) else None
        if (
            not isinstance(source.get("module"), str)
            or not isinstance(files, dict)
            or not all(isinstance(p, str) and isinstance(s, str) and _SHA.match(s) for p, s in files.items())
        ):
            raise InvalidError(f"function {tag!r}: spec.source must be {{module, files: {{path: sha256}}}}")
        for path in files:
            if path.startswith("/") or ".." in path.split("/") or not path.endswith(".py"):
                raise InvalidError(f"function {tag!r}: source file {path!r} must be a relative path to a .py file")
    return raw


def _pin_source_files(session: Any, shas: set[str]) -> None:
    """Keep the app's source files for as long as the database lives: uploads in Redis expire after a week."""
    if not shas:
        return
    pinned = set(session.scalars(select(SourceFileRecord.sha).where(SourceFileRecord.sha.in_(shas))))
    redis = services().redis
    for sha in sorted(shas - pinned):
        data = redis.get(protocol.file_key(sha))
        if data is None:
            raise InvalidError(f"source file {sha} was not uploaded: PUT /v1/files/{sha} first")
        session.add(SourceFileRecord(sha=sha, data=data))


def _attach_image(session: Any, record: FunctionRecord) -> None:
    """Point the function at its built image (container queue), or at a runner process (cpu queue)."""
    if record.image_id is None:
        record.queue = protocol.QUEUE_CPU
        return
    image = session.get(ImageRecord, record.image_id)
    if image is None:
        raise NotFoundError(f"function {record.tag!r}: no image {record.image_id!r}; register it with POST /v1/images")
    if image.status == ImageStatus.READY:
        record.image_tag, record.queue = image.tag, protocol.QUEUE_CONTAINER
    elif image.status == ImageStatus.PROCESS:
        record.queue = protocol.QUEUE_CPU
    else:
        raise InvalidError(
            f"function {record.tag!r}: image {record.image_id} is {image.status}, not built; "
            + (image.error or "wait for its build to finish")
        )


def _own_app(session: Any, app_id: str) -> AppRecord:
    return owned(session, AppRecord, app_id, g.user.id, "app")


@bp.get("/apps")
@doc("The user's apps, newest first (at most 200), with their functions' tags", reply=Apps)
def list_apps():  # type: ignore[no-untyped-def]
    """The user's apps, newest first, with their functions."""
    with services().db.read() as session:
        apps = session.scalars(
            select(AppRecord).where(AppRecord.user_id == g.user.id).order_by(AppRecord.created_at.desc()).limit(200)
        ).all()
        tags: dict[str, list[str]] = {}
        for app_id, tag in session.execute(
            select(FunctionRecord.app_id, FunctionRecord.tag).where(FunctionRecord.app_id.in_([a.id for a in apps]))
        ):
            tags.setdefault(app_id, []).append(tag)
        return {
            "apps": [
                {
                    "app_id": a.id,
                    "name": a.name,
                    "state": a.state,
                    "created_at": a.created_at.isoformat(),
                    "stopped_at": a.stopped_at.isoformat() if a.stopped_at else None,
                    "functions": sorted(tags.get(a.id, [])),
                }
                for a in apps
            ]
        }


@bp.post("/apps/<app_id>/stop")
@doc("Stop an app", reply=AppStopped, errors=(404,))
def stop_app(app_id: str):  # type: ignore[no-untyped-def]
    with services().db.write() as session:
        function_ids, cancelled = stop_record(session, _own_app(session, app_id))
    after_stop(function_ids)
    sandboxes.terminate_app(services().db, services().redis, app_id)  # `app stop` ends the app's sandboxes
    return {"app_id": app_id, "state": "stopped", "cancelled": cancelled}


def stop_record(session: Any, record: AppRecord) -> tuple[list[str], int]:
    """Stop an app (ephemeral or a deployed version) in this transaction: what its calls left running ends
    cancelled (`minimodal run` without --detach, Ctrl-C, `app stop`). Returns its function ids and how many
    inputs were cancelled; :func:`after_stop` does the rest once the transaction is in."""
    if record.state != "stopped":
        record.state, record.stopped_at = "stopped", utcnow()
    function_ids = list(session.scalars(select(FunctionRecord.id).where(FunctionRecord.app_id == record.id)))
    calls = list(session.scalars(select(CallRecord.id).where(CallRecord.function_id.in_(function_ids))))
    svc = services()
    cancelled = cancel_calls(
        session, svc.redis, svc.payloads, calls, ttl=svc.settings["result_ttl"], why="the app was stopped"
    )
    return function_ids, cancelled


def after_stop(function_ids: list[str]) -> None:
    """A stopped app keeps no runner warm, and the workers stop its runners; its schedules end."""
    svc = services()
    svc.pending.forget_warm(function_ids)
    if function_ids:  # mm_app/tasks/context.py keep_warm
        with svc.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(protocol.retired_functions_key(), *function_ids)
            pipe.expire(protocol.retired_functions_key(), 3600)
            pipe.execute()
    after_change(g.user.id)


def after_change(user_id: int) -> None:
    """Bring what follows from deployments and apps (schedules) in line with the database."""
    from ..schedules import reconcile_user

    reconcile_user(services(), user_id)


def web_url(user: str, app: str, tag: str) -> str:
    return f"{request.host_url.rstrip('/')}/web/{user}/{app}/{tag}"


@bp.get("/functions/<function_id>")
@doc("A function's app, tag and options", reply=FunctionView, errors=(404,))
def get_function(function_id: str):  # type: ignore[no-untyped-def]
    with services().db.read() as session:
        record = owned(session, FunctionRecord, function_id, g.user.id, "function")
        return {"function_id": record.id, "app_id": record.app_id, "tag": record.tag, "options": record.options}
