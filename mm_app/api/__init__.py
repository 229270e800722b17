"""The MiniModal REST API: ``create_app()`` builds it; nothing is read at import time.

Blueprints: :mod:`.health` (no auth), :mod:`.apps`, :mod:`.calls`, :mod:`.users`. Errors are mapped
in :mod:`.errors`. The API stores opaque payloads and enqueues work; it never unpickles user data and
never imports worker code (the dispatcher sends Celery tasks by name).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from redis import Redis

from ..database import Database
from . import (
    apps,
    calls,
    containers,
    deadletters,
    deploys,
    errors,
    health,
    images,
    internal,
    objects,
    observe,
    sandboxes,
    secrets,
    streams,
    tunnels,
    users,
    volumes,
    web,
)
from .services import Services


def create_app(
    config: dict[str, Any] | None = None, *, redis: Redis | None = None, database: Database | None = None
) -> Flask:
    """Build the API. ``config`` overrides settings by name (``redis_url``, ``database_url``, ...)."""
    services = Services.build(config or {}, redis=redis, database=database)
    app = Flask("minimodal")
    app.config["MAX_CONTENT_LENGTH"] = services.settings["max_payload_size"] + 64 * 1024
    app.extensions["minimodal"] = services
    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(apps.bp)
    app.register_blueprint(calls.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(images.bp)
    app.register_blueprint(observe.bp)  # /ready, /stats, /metrics, /openapi.json, /dashboard
    app.register_blueprint(streams.bp)
    app.register_blueprint(deadletters.bp)
    app.register_blueprint(deploys.bp)  # /v1/deployments: deployed, versioned apps
    app.register_blueprint(web.bp)  # /web/{user}/{app}/{function}/...: web endpoints, public by default
    app.register_blueprint(objects.bp)  # Dict and Queue
    app.register_blueprint(secrets.bp)
    app.register_blueprint(volumes.bp)
    app.register_blueprint(sandboxes.bp)  # /v1/sandboxes: containers created at run time, exec and streams
    app.register_blueprint(tunnels.bp)  # /v1/sandboxes/{id}/tunnels/{port}/: HTTP to a sandbox's port
    app.register_blueprint(containers.bp)  # /v1/containers: list, logs, stop, exec, tty; function shells
    app.register_blueprint(internal.bp)  # workers only: the volume store
    return app
