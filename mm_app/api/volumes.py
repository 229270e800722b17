"""``/v1/volumes/{id}/...``: the files of a volume of the token's user, streamed both ways.

Volumes are created, listed and deleted as objects (``POST /v1/objects`` with kind ``volume``).
``GET .../entries?path=&recursive=`` lists; ``GET .../files/{path}`` streams a file out; ``PUT
.../files/{path}?force=`` streams one in (no size limit but the disk: chunks of 1 MiB, never the whole
file in memory) and commits it; ``DELETE .../files/{path}?recursive=`` removes. Another user's
volume is 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, request
from pydantic import Field

from minimodal.exception import InvalidError, NotFoundError

from .. import objects, volumes
from .auth import authenticate
from .schema import Doc, Query, Reply
from .services import services

bp = Blueprint("volumes", __name__, url_prefix="/v1/volumes")
bp.before_request(authenticate)
doc = Doc("volumes")
_PATHS = {"path": "file path"}


class Listing(Query):
    path: str = Field("", description="directory or file")
    recursive: str = Field("0", description="1 to list all below")


class WriteFlags(Query):
    force: str = Field("0", description="1 to overwrite")


class RemoveFlags(Query):
    recursive: str = Field("0", description="1 for a directory")


class Entries(Reply):
    entries: list[dict[str, Any]]


class FileWritten(Reply):
    path: str
    sha: str
    size: int


class Removed(Reply):
    removed: list[str]


def _volume(volume_id: str) -> str:
    return objects.resolve(services().redis, g.user.id, {"kind": "volume", "id": volume_id})


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


@bp.get("/<volume_id>/entries")
@doc("Files and directories of a volume", query=Listing, reply=Entries, errors=(404,))
def list_entries(volume_id: str, query: Listing):  # type: ignore[no-untyped-def]
    files = volumes.manifest(services().redis, _volume(volume_id))
    return {"entries": volumes.listdir(files, query.path, _flag(query.recursive))}


@bp.get("/<volume_id>/files/<path:path>")
@doc("Stream a file out", reply=bytes, media="application/octet-stream", errors=(404,), params=_PATHS)
def read_file(volume_id: str, path: str):  # type: ignore[no-untyped-def]
    files = volumes.manifest(services().redis, _volume(volume_id))
    meta = files.get(volumes.normalize(path))
    if meta is None:
        raise NotFoundError(f"no such file in the volume: {path}")
    store = volumes.BlobStore()
    if not store.has(meta["sha"]):
        raise NotFoundError(f"the content of {path} is missing from the store {store.root}")
    headers = {"Content-Length": str(meta["size"]), "X-Content-SHA256": meta["sha"]}
    return Response(store.read(meta["sha"]), mimetype="application/octet-stream", headers=headers)


@bp.put("/<volume_id>/files/<path:path>")
@doc(
    "Stream a file in and commit it",
    ok=201,
    query=WriteFlags,
    raw_body="application/octet-stream",
    reply=FileWritten,
    errors=(404,),
    params=_PATHS,
)
def write_file(volume_id: str, path: str, query: WriteFlags):  # type: ignore[no-untyped-def]
    volume_id = _volume(volume_id)
    target = volumes.normalize(path)
    if not target:
        raise InvalidError("give a file path")
    redis = services().redis
    if not _flag(query.force) and target in volumes.manifest(redis, volume_id):
        raise InvalidError(f"{target} exists in the volume; pass force to overwrite it")
    request.max_content_length = 1 << 50  # files may be larger than call payloads: they stream to disk
    sha, size = volumes.BlobStore().put_stream(request.stream)
    volumes.apply(redis, volume_id, {target: volumes.entry(sha, size)}, [])
    return {"path": target, "sha": sha, "size": size}, 201


@bp.delete("/<volume_id>/files/<path:path>")
@doc(
    "Remove a file, or a directory with recursive=1",
    query=RemoveFlags,
    reply=Removed,
    errors=(404,),
    params={"path": "file or directory"},
)
def remove_file(volume_id: str, path: str, query: RemoveFlags):  # type: ignore[no-untyped-def]
    removed = volumes.remove(services().redis, _volume(volume_id), path, _flag(query.recursive))
    return {"removed": removed}
