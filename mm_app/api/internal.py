"""``/internal/...``: routes for workers only, opened by the workers' credential (``mm_app/credential.py``).

The API process alone owns the volume store (``mm_app/volumes.py``); workers on any host read and
write it here. ``GET /internal/volume-blobs/{sha}`` streams a stored file version out (``HEAD`` asks
whether it is stored); ``PUT`` streams one in, in 1 MiB chunks, and keeps it only if it hashes to
``{sha}``. ``GET /internal/cluster`` tells a worker joining from another machine (``minimodal worker
join``) the rest of what it needs: Redis, the database, the image registry and the secrets' key. A
user's token, an admin's too, gets 403; no token or an unknown one, 401.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from minimodal import config
from minimodal.exception import AuthError, NotFoundError, PermissionDeniedError

from .. import credential, vault, volumes
from .auth import authenticate
from .schema import Doc, Reply

bp = Blueprint("internal", __name__, url_prefix="/internal")
doc = Doc("internal", security="worker")  # the workers' credential (MINIMODAL_WORKER_TOKEN); a user token is 403


class Stored(Reply):
    sha: str
    size: int


class ClusterSettings(Reply):
    redis_url: str
    database_url: str
    registry: str | None
    secret_key: str


@bp.before_request
def worker_only() -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing bearer token: internal routes take the workers' credential (MINIMODAL_WORKER_TOKEN)")
    if credential.is_worker_token(token.strip()):
        return
    authenticate()  # an unknown token is a 401, as on every route
    raise PermissionDeniedError("this is an internal route of workers: user tokens cannot use it")


@bp.get("/volume-blobs/<sha>")
@doc(
    "Stream a stored volume file version out (workers only; HEAD: whether it is stored)",
    reply=bytes,
    media="application/octet-stream",
    errors=(404,),
)
def get_volume_blob(sha: str):  # type: ignore[no-untyped-def]
    store = volumes.BlobStore()
    if not store.has(sha):
        raise NotFoundError(f"no file version {sha} in the volume store")
    size = store.path(sha).stat().st_size
    headers = {"Content-Length": str(size), "X-Content-SHA256": sha}
    return Response(store.read(sha), mimetype="application/octet-stream", headers=headers)


@bp.put("/volume-blobs/<sha>")
@doc(
    "Stream a volume file version in; kept only if it hashes to {sha} (workers only)",
    ok=201,
    raw_body="application/octet-stream",
    reply=Stored,
)
def put_volume_blob(sha: str):  # type: ignore[no-untyped-def]
    store = volumes.BlobStore()
    request.max_content_length = 1 << 50  # a volume file may be larger than call payloads: it streams to disk
    stored, size = store.put_stream(request.stream, expect=sha)
    return {"sha": stored, "size": size}, 201


@bp.get("/cluster")
@doc("What a worker joining from another machine needs: Redis, database, registry, secrets' key", reply=ClusterSettings)
def cluster_settings():  # type: ignore[no-untyped-def]
    """The settings a worker on another machine needs: what this API uses, unless advertised otherwise.

    The control plane often reaches Redis and the database on loopback; ``MINIMODAL_ADVERTISED_REDIS_URL``
    and ``MINIMODAL_ADVERTISED_DATABASE_URL`` give the addresses other machines use instead.
    """
    return {
        "redis_url": config.get("advertised_redis_url") or config.get("redis_url"),
        "database_url": config.get("advertised_database_url") or config.database_url(),
        "registry": config.get("registry"),
        "secret_key": vault.key(),  # secrets are decrypted on the worker that runs the call
    }
