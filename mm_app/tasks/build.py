"""``mm.build_image``: build an image spec on a Docker worker, streaming its log to Redis."""

from __future__ import annotations

import logging
from typing import Any

import cloudpickle

from minimodal import config, protocol
from minimodal.protocol import ImageStatus
from workers.images import BuildError, ImageBuilder

from ..celery_app import app
from ..models import ImageRecord, utcnow
from .context import WorkerContext, open_context

logger = logging.getLogger("minimodal.worker.build")


@app.task(name=protocol.TASK_BUILD_IMAGE, bind=True, acks_late=True, ignore_result=True)
def build_image(self: Any, image_id: str) -> None:
    build(open_context(self.app), image_id)


def build(ctx: WorkerContext, image_id: str) -> None:
    """Build the image record's spec with this worker's Docker engine; the record ends ready or failed."""
    log_key = protocol.build_log_key(image_id)

    def log(line: str) -> None:
        ctx.redis.xadd(log_key, {"line": line[:4000]}, maxlen=20000, approximate=True)

    def fetch(sha: str) -> bytes:
        data = ctx.redis.get(protocol.file_key(sha))
        if data is None:
            raise BuildError(f"the build file {sha[:12]} is missing from Redis (expired); deploy again to re-upload")
        return data

    with ctx.db.read() as session:
        record = session.get(ImageRecord, image_id)
        spec: dict[str, Any] | None = dict(record.spec) if record else None
    if spec is None:
        return
    docker = ctx.pools.get("docker")
    status, tag, error, events = ImageStatus.FAILED.value, None, None, []
    try:
        if docker is None:
            raise BuildError("this worker has no Docker engine")
        from workers.runtimes.docker import DockerRuntime  # the docker SDK: only where it builds

        assert isinstance(docker.runtime, DockerRuntime)
        builder = ImageBuilder(
            docker.runtime.client,
            cloudpickle_version=cloudpickle.__version__,
            debian_slim=config.get("debian_slim_image"),
            registry=config.get("registry"),
        )
        result = builder.build(spec, fetch, log)
        status, tag, events = ImageStatus.READY.value, result.tag, result.events
    except BuildError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure must end the build visibly
        logger.exception("building %s failed", image_id)
        error = f"the build failed on the worker: {exc!r}"
    with ctx.db.write() as session:
        record = session.get(ImageRecord, image_id)
        if record is not None:
            record.status, record.tag, record.error, record.events = status, tag, error, events
            record.built_at = utcnow()
    log(f"=> {status}" + (f": {error.splitlines()[0]}" if error else ""))
    ctx.redis.xadd(log_key, {"done": status})
    ctx.redis.expire(log_key, 24 * 3600)
