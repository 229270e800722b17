"""Images: content-addressed build files, and image specs built on a Docker worker.

``PUT /v1/files/{sha256}`` uploads a file the spec refers to; ``POST /v1/images`` registers a spec and
starts its build on the ``mm.build`` queue (or answers ``process`` for the default image when no
worker has Docker); ``GET /v1/images/{id}`` long-polls its status and build log.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from flask import Blueprint, request
from pydantic import Field
from sqlalchemy import select

from minimodal import config, protocol
from minimodal.exception import InvalidError, NotFoundError, PayloadTooLargeError
from minimodal.protocol import ImageStatus

from ..models import ImageRecord, SourceFileRecord
from ..registry import docker_workers, live_workers
from .auth import authenticate, seconds
from .schema import Body, Doc, Query, Reply, Timestamp
from .services import services

bp = Blueprint("images", __name__, url_prefix="/v1")
bp.before_request(authenticate)

_SHA = re.compile(r"^[0-9a-f]{64}$")
_STR, _LIST, _DICT, _BOOL = str, list, dict, bool
# op -> {field: type}; every field listed is required except those in _OPTIONAL.
_OPS: dict[str, dict[str, type]] = {
    "debian_slim": {"python": _STR},
    "from_registry": {"tag": _STR},
    "from_dockerfile": {"dockerfile": _STR, "context": _STR},
    "apt_install": {"packages": _LIST},
    "pip_install": {
        "packages": _LIST,
        "index_url": _STR,
        "extra_index_url": _STR,
        "pre": _BOOL,
        "find_links": _STR,
        "extra_options": _STR,
    },
    "uv_pip_install": {
        "packages": _LIST,
        "requirements": _LIST,  # sha256 of each uploaded requirements file
        "index_url": _STR,
        "extra_index_url": _STR,
        "pre": _BOOL,
        "find_links": _STR,
        "extra_options": _STR,
        "uv_version": _STR,
        "env": _DICT,
    },
    "run_commands": {"commands": _LIST},
    "env": {"vars": _DICT},
    "workdir": {"path": _STR},
    "add_local_file": {"sha": _STR, "remote": _STR, "mode": _STR},
    "add_local_dir": {"sha": _STR, "remote": _STR},
    "add_local_python_source": {"sha": _STR, "modules": _LIST},
    "run_function": {"sha": _STR, "name": _STR},
}
_OPTIONAL = {"index_url", "extra_index_url", "pre", "find_links", "extra_options", "mode", "name"}
_OPTIONAL |= {"requirements", "uv_version", "env"}
_BASES = {"debian_slim", "from_registry", "from_dockerfile"}


def _validate(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], str, list[str]]:
    """The layers, the Python version and the file hashes the spec needs; InvalidError if malformed."""
    layers, python = spec.get("layers"), spec.get("python")
    if not isinstance(layers, list) or not layers or not isinstance(python, str):
        raise InvalidError("an image needs 'layers' (a non-empty list) and 'python' (e.g. '3.11')")
    files = []
    for i, layer in enumerate(layers):
        op = layer.get("op") if isinstance(layer, dict) else None
        if op not in _OPS:
            raise InvalidError(f"layer {i}: unknown op {op!r}")
        if (i == 0) != (op in _BASES):
            raise InvalidError(f"layer {i}: {op} " + ("cannot start an image" if i == 0 else "must come first"))
        for name, value in layer.items():
            if name != "op" and (name not in _OPS[op] or not isinstance(value, _OPS[op][name])):
                raise InvalidError(f"layer {i} ({op}): bad field {name!r}")
        missing = [n for n in _OPS[op] if n not in layer and n not in _OPTIONAL]
        if missing:
            raise InvalidError(f"layer {i} ({op}): missing {missing}")
        if op == "debian_slim" and not protocol.is_python_version(layer["python"]):
            raise InvalidError(f"layer {i} ({op}): python must be a major.minor such as '3.13'")
        for name in ("sha", "context"):
            if name in layer:
                if not _SHA.match(layer[name]):
                    raise InvalidError(f"layer {i} ({op}): {name} must be a sha256 hex digest")
                files.append(layer[name])
        for sha in layer.get("requirements", []):
            if not isinstance(sha, str) or not _SHA.match(sha):
                raise InvalidError(f"layer {i} ({op}): requirements must be sha256 hex digests")
            files.append(sha)
    return layers, python, files


def check_python(version: str, workers: list[dict[str, Any]]) -> None:
    """Refuse ``Image.debian_slim(python_version=version)`` when no live worker can give that Python.

    Docker workers report the versions their engine has a base image for (``pythons``); without one,
    functions run in the workers' runner processes, which have one Python each (``python``). A worker
    that reports neither is not counted against the version; with none reporting, nothing is checked
    (the builder then fails naming what its engine has).
    """
    docker = [w for w in workers if "docker" in w.get("runtimes", [])]
    if docker:
        if not any(w.get("pythons") for w in docker):
            return  # none has a base image yet (a new engine, or one that pulls its bases from the registry)
        offered = protocol.sorted_pythons(v for w in docker for v in w.get("pythons") or [])
        if version not in offered:
            raise InvalidError(
                f"Image.debian_slim(python_version={version!r}): this cluster builds Python "
                f"{', '.join(offered) or 'of no version'} (the base images its Docker workers have); use one of "
                "those, or add the base image with docker/base/build.sh on the workers"
            )
        return
    offered = protocol.sorted_pythons(w["python"] for w in workers if w.get("python"))
    if offered and version not in offered:
        raise InvalidError(
            f"Image.debian_slim(python_version={version!r}): no worker has a Docker engine, so functions run in "
            f"the workers' runner processes, with Python {', '.join(offered)}; use that version, or start a worker "
            "with Docker to build images of another"
        )


def image_id_for(spec: dict[str, Any]) -> str:
    return "im-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _describe(record: ImageRecord) -> dict[str, Any]:
    return {
        "image_id": record.id,
        "status": record.status,
        "tag": record.tag,
        "error": record.error,
        "events": record.events or [],
        "built_at": record.built_at.isoformat() if record.built_at else None,
    }


MAX_FILES_ASKED = 10_000  # shas in one /files/missing request
doc = Doc("images")


class FileShas(Body):
    shas: list[str] = Field(max_length=MAX_FILES_ASKED)


class Missing(Reply):
    missing: list[str]


class FileStored(Reply):
    sha: str
    size: int


class ImageSpec(Body):
    layers: list[dict[str, Any]] = Field(description="the first a base (debian_slim, from_registry, ...), then steps")
    python: str = Field(description="the Python version, e.g. '3.11'")


class ImageView(Reply):
    image_id: str
    status: Literal["building", "ready", "failed", "process"]
    tag: str
    error: str
    events: list[dict[str, Any]]
    built_at: Timestamp


class BuildLog(Query):
    cursor: str = Field("0-0", description="stream cursor of the previous reply, `<ms>-<seq>`; `0-0` from the start")
    timeout: float = Field(0, description="seconds (0-30)")


class ImageProgress(ImageView):
    logs: list[str]
    cursor: str


@bp.post("/files/missing")
@doc("Which of these files (by sha256) the server lacks: the client uploads only those", body=FileShas, reply=Missing)
def missing_files(body: FileShas):  # type: ignore[no-untyped-def]
    """Which of the named files are not stored (neither uploaded recently nor pinned by an app's source)."""
    shas = body.shas
    if len(shas) > MAX_FILES_ASKED or not all(isinstance(sha, str) and _SHA.match(sha) for sha in shas):
        raise InvalidError(f"shas must be a list of at most {MAX_FILES_ASKED} sha256 hex digests")
    svc = services()
    with svc.redis.pipeline(transaction=False) as pipe:
        for sha in shas:
            pipe.exists(protocol.file_key(sha))
        present = pipe.execute()
    unknown = [sha for sha, here in zip(shas, present, strict=True) if not here]
    if unknown:
        with svc.db.read() as session:
            pinned = set(session.scalars(select(SourceFileRecord.sha).where(SourceFileRecord.sha.in_(unknown))))
        unknown = [sha for sha in unknown if sha not in pinned]
    return {"missing": unknown}


@bp.route("/files/<sha>", methods=["HEAD"])
@doc("Whether a build file is stored", errors=(404,), params={"sha": "sha256"})
def has_file(sha: str):  # type: ignore[no-untyped-def]
    if not services().redis.exists(protocol.file_key(sha)):
        raise NotFoundError(f"no file {sha!r}")  # a JSON error, as on every route (a HEAD reply drops the body)
    return {"sha": sha}


@bp.put("/files/<sha>")
@doc(
    "Upload a build file, named by its sha256",
    raw_body="application/octet-stream",
    reply=FileStored,
    ok=201,
    params={"sha": "sha256 hex digest of the body"},
)
def put_file(sha: str):  # type: ignore[no-untyped-def]
    if not _SHA.match(sha):
        raise InvalidError("the file name must be its sha256 hex digest")
    svc = services()
    data = request.get_data(cache=False)
    if len(data) > svc.settings["max_payload_size"]:
        raise PayloadTooLargeError("the file is over the maximum payload size")
    if hashlib.sha256(data).hexdigest() != sha:
        raise InvalidError("the body does not hash to the sha256 in the URL")
    svc.redis.set(protocol.file_key(sha), data, ex=7 * 24 * 3600)
    return {"sha": sha, "size": len(data)}, 201


@bp.post("/images")
@doc("Register an image spec and start its build", body=ImageSpec, reply=ImageView, ok=201)
def create_image(body: ImageSpec):  # type: ignore[no-untyped-def]
    layers, python, files = _validate(body.model_dump())
    spec = {"layers": layers, "python": python}
    image_id = image_id_for(spec)
    svc = services()
    if layers[0]["op"] == "debian_slim":
        check_python(layers[0]["python"], live_workers(svc.redis))
    build = False
    with svc.db.write() as session:
        record = session.get(ImageRecord, image_id)
        if record is not None:
            # Built before MINIMODAL_REGISTRY was set: build again (every layer is cached) to push it there.
            registry = config.get("registry")
            unpushed = bool(registry) and not (record.tag or "").startswith(f"{registry}/")
            if record.status == ImageStatus.BUILDING or (record.status == ImageStatus.READY and not unpushed):
                return _describe(record)
        if record is None:
            record = ImageRecord(id=image_id, spec=spec, status=ImageStatus.BUILDING.value)
            session.add(record)
        record.error, record.events = None, []
        if docker_workers(svc.redis):
            missing = [sha for sha in files if not svc.redis.exists(protocol.file_key(sha))]
            if missing:
                raise InvalidError(f"upload these files first with PUT /v1/files/{{sha}}: {missing}")
            record.status, build = ImageStatus.BUILDING.value, True
        elif layers == [{"op": "debian_slim", "python": python}]:
            record.status = ImageStatus.PROCESS.value  # nothing to build: functions run in runner processes
        else:
            record.status = ImageStatus.FAILED.value
            record.error = "no worker with a Docker engine is running, and this image needs one to be built"
        result = _describe(record)
    if build:
        svc.redis.delete(protocol.build_log_key(image_id))
        svc.celery.send_task(protocol.TASK_BUILD_IMAGE, args=[image_id], queue=protocol.QUEUE_BUILD)
    return result, 201


@bp.get("/images/<image_id>")
@doc("An image's build status and log lines after a cursor", query=BuildLog, reply=ImageProgress, errors=(404,))
def get_image(image_id: str, query: BuildLog):  # type: ignore[no-untyped-def]
    """Status and build log lines after ``cursor``, waiting up to ``timeout`` s while it builds."""
    svc = services()
    cursor = query.cursor
    wait = seconds(query.timeout, "timeout", high=30, clamp=True)
    with svc.db.read() as session:
        record = session.get(ImageRecord, image_id)
        if record is None:
            raise NotFoundError(f"no image {image_id!r}")
        status = record.status
    lines: list[str] = []
    key = protocol.build_log_key(image_id)
    if status == ImageStatus.BUILDING:
        reply = svc.redis.xread({key: cursor}, count=1000, block=int(wait * 1000) or None)
        entries = reply[0][1] if reply else []
    else:
        entries = svc.redis.xrange(key, min=f"({cursor}" if cursor != "0-0" else "-", count=1000)
    for entry_id, fields in entries:
        cursor = entry_id.decode()
        if b"line" in fields:
            lines.append(fields[b"line"].decode("utf-8", "replace"))
    with svc.db.read() as session:
        record = session.get(ImageRecord, image_id)
        assert record is not None
        return {**_describe(record), "logs": lines, "cursor": cursor}
