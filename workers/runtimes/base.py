"""The runtime interface: a Runtime starts Runners; a Runner runs one input at a time and stays warm."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunnerSpec:
    """What a runtime needs to start a runner for one function version."""

    key: str  # runners with the same key are interchangeable (same user, same code and options)
    code: bytes  # the cloudpickled function
    timeout: float  # seconds one input may run
    scaledown_window: float  # idle seconds before the pool stops the runner
    cpu: float | None = None
    memory: int | None = None
    image: str | None = None  # the built image's tag (Docker runtime); None for runner processes
    min_containers: int = 0  # kept up even when idle (per worker)
    buffer_containers: int = 0  # extra idle runners kept while any is busy (per worker)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The result of one input. ``data`` is opaque: the pickled return value or exception."""

    ok: bool
    data: bytes = b""
    error_type: str | None = None  # a minimodal.exception name for failures the platform detected
    message: str | None = None
    traceback: str | None = None
    duration: float = 0.0
    runner_lost: bool = False  # the runner died or was killed: the pool must not reuse it


LogSink = Callable[[str, str], None]  # (stream name, text)


class Runner(abc.ABC):
    spec: RunnerSpec

    @abc.abstractmethod
    def call(self, payload: bytes, *, call_id: str, idx: int, on_log: LogSink | None = None) -> Outcome:
        """Run one input; never raises for failures of the user's code."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the runner and release what it holds. Safe to call twice."""


class RunnerStartError(Exception):
    """Raised when a runner cannot start or its function cannot be loaded."""

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


class Runtime(abc.ABC):
    name: str

    @abc.abstractmethod
    def start(self, spec: RunnerSpec) -> Runner:
        """Start a warm runner with the function loaded; raise RunnerStartError on failure."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook; most runtimes hold nothing runtime-wide
        """Release runtime-wide resources (runners are stopped by the pool)."""
