"""Runtimes: one interface (:mod:`.base`), one module per way of isolating user code."""

from __future__ import annotations

import logging
from typing import Any

from .base import Outcome, Runner, RunnerSpec, Runtime

__all__ = ["Outcome", "Runner", "RunnerSpec", "Runtime", "docker_client"]

logger = logging.getLogger("minimodal.workers")


def docker_client(timeout: int = 30) -> Any | None:
    """A client of the local Docker engine if one answers, else None (the docker SDK is imported lazily).

    ``timeout`` applies to every API call of the client: force-removing a container that holds much
    memory can take several seconds.
    """
    try:
        import docker
    except ImportError:
        return None
    client = None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception:  # noqa: BLE001 - any failure means: no usable engine here
        if client is not None:
            client.close()
        return None
