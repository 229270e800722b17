"""The runtime interface: a Runtime starts Runners; a Runner runs one input at a time (or, for
``@concurrent``/``@batched`` functions, several: ``shared.call_shared``) and stays warm.

Every input runs through :meth:`FrameLink.call`, whatever the runtime: a runtime gives its runners a way
to send and read frames (``minimodal._frames``), to be stopped, and to say how a runner was lost.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from minimodal._frames import Frame, Kind


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
    block_network: bool = False  # no network at all in the runner (Docker runtime only)
    labels: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)  # container path -> host directory (volumes)
    max_inputs: int = 1  # inputs the runner takes at once (@concurrent; @batched: its max_batch_size)
    batch_wait_ms: int | None = None  # set for a @batched function: the runner groups inputs into calls
    # Import by name: the app's shipped source (a zip, sent as a SOURCE frame before FUNCTION), and what the
    # FUNCTION header adds (``import``: module and tag; ``app``: the app's id and every function's id by tag).
    source: bytes | None = field(default=None, repr=False, compare=False)
    load: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def shared(self) -> bool:
        """The runner takes inputs through ``shared.call_shared`` (tagged frames), one share each."""
        return self.max_inputs > 1 or self.batch_wait_ms is not None

    def load_header(self) -> dict[str, Any]:
        """The header of the FUNCTION frame: how to load the function, how the runner takes inputs."""
        header: dict[str, Any] = dict(self.load)
        if not self.shared:
            return header
        header["max_inputs"] = self.max_inputs
        if self.batch_wait_ms is not None:
            header["batch"] = {"max_batch_size": self.max_inputs, "wait_ms": self.batch_wait_ms}
        return header


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
    items: int | None = None  # for a generator: how many items it yielded (sent through on_item)


LogSink = Callable[[str, str], None]  # (stream name, text)
ItemSink = Callable[[int, bytes], None]  # (item index, pickled item) of a generator
# A request of the function's code to the platform (a Dict or Queue operation, ...): JSON in, JSON out.
RequestHandler = Callable[[dict[str, Any]], dict[str, Any]]
Send = Callable[[Kind, dict[str, Any], bytes], None]


def call_header(call_id: str, idx: int, env: dict[str, str] | None) -> dict[str, Any]:
    """The header of a CALL frame: the input, and the environment (secrets) it runs with."""
    return {"call_id": call_id, "idx": idx, **({"env": env} if env else {})}


def answer_request(handler: RequestHandler | None, header: dict[str, Any]) -> dict[str, Any]:
    """The answer to a runner's REQUEST frame; a failure becomes ``{"error": {"type", "message"}}``."""
    if handler is None:
        return {"error": {"type": "ServiceError", "message": "this runner serves no platform requests"}}
    try:
        return handler(header)
    except Exception as exc:  # noqa: BLE001 - the function's code gets the error, the runner lives on
        if type(exc).__module__ == "minimodal.exception":
            return {"error": {"type": type(exc).__name__, "message": str(exc)}}
        return {"error": {"type": "ServiceError", "message": f"the worker failed to serve the request: {exc!r}"}}


def serve_frames(
    read: Callable[[], Frame | None],
    started: float,
    *,
    on_log: LogSink | None,
    on_item: ItemSink | None,
    on_request: RequestHandler | None = None,
    send: Send | None = None,
) -> Outcome | None:
    """Read a runner's frames for one input until its output; None if the runner went away first.

    Log and item frames go to the sinks as they come; neither the frames nor the output are unpickled.
    A REQUEST frame (a request of the function's code) is answered with an ANSWER frame through ``send``,
    echoing its ``rid``; a request that may wait (an API call of a function calling a function: ``kind``
    ``http``) is answered from a thread, so the input's logs and its other requests flow meanwhile. An
    answer that comes after the input ended is dropped.
    """
    answers = _Answers(send, on_request)
    try:
        return _serve(read, started, on_log, on_item, answers)
    finally:
        answers.close()


class _Answers:
    """Answers a runner's REQUEST frames for one input; the waiting ones from threads, under one lock."""

    def __init__(self, send: Send | None, handler: RequestHandler | None) -> None:
        self.send, self.handler = send, handler
        self.lock = threading.Lock()
        self.closed = False

    def answer(self, header: dict[str, Any]) -> None:
        if header.get("kind") == "http":
            threading.Thread(target=self._reply, args=(header,), name="mm-request", daemon=True).start()
        else:
            self._reply(header)

    def _reply(self, header: dict[str, Any]) -> None:
        answer = {**answer_request(self.handler, header), **({"rid": header["rid"]} if "rid" in header else {})}
        with self.lock:
            if not self.closed and self.send is not None:
                self.send(Kind.ANSWER, answer, b"")

    def close(self) -> None:
        with self.lock:
            self.closed = True


def _serve(
    read: Callable[[], Frame | None],
    started: float,
    on_log: LogSink | None,
    on_item: ItemSink | None,
    answers: _Answers,
) -> Outcome | None:
    while True:
        frame = read()
        if frame is None:
            return None
        kind, header, body = frame
        if kind == Kind.LOG:
            if on_log is not None:
                on_log(header.get("stream", "stdout"), body.decode("utf-8", "replace"))
        elif kind == Kind.ITEM:
            if on_item is not None:
                on_item(int(header["n"]), body)
        elif kind == Kind.REQUEST and answers.send is not None:
            answers.answer(header)
        elif kind == Kind.OUTPUT:
            duration = time.monotonic() - started
            if header.get("ok"):
                return Outcome(ok=True, data=body, duration=duration, items=header.get("items"))
            return Outcome(
                ok=False, data=body, message=header.get("repr"), traceback=header.get("traceback"), duration=duration
            )


class FrameLink(abc.ABC):
    """What one input's frames travel over: a runner's own stream (a :class:`Runner`), or one share of it
    (``workers/runtimes/shared.py``). :meth:`call` is the one way an input runs, on either."""

    @property
    @abc.abstractmethod
    def timeout(self) -> float:
        """Seconds one input may run."""

    def call(
        self,
        payload: bytes,
        *,
        call_id: str,
        idx: int,
        on_log: LogSink | None = None,
        on_item: ItemSink | None = None,
        on_request: RequestHandler | None = None,
        env: dict[str, str] | None = None,
    ) -> Outcome:
        """Run one input; never raises for failures of the user's code.

        ``env`` is set in the runner's ``os.environ`` for this input only (secrets travel this way, in
        the call frame, never in the container's configuration); ``on_request`` answers the requests
        the code makes to the platform (Dict, Queue, ...) while it runs. An input that runs past the
        timeout stops the runner; a runner that dies, or whose stream breaks, ends it with ``runner_lost``.
        """
        started = time.monotonic()
        deadline = started + self.timeout
        try:
            if not self.begin_input(on_log):
                return self.lost(started, idx)
            self.send_frame(Kind.CALL, call_header(call_id, idx, env), payload, deadline)
            outcome = serve_frames(
                lambda: self.read_frame(deadline),
                started,
                on_log=on_log,
                on_item=on_item,
                on_request=on_request,
                send=lambda kind, header, body: self.send_frame(kind, header, body, deadline),
            )
            if outcome is None:
                return self.lost(started, idx)
            self.end_input()
            return outcome
        except TimeoutError:
            stopped = self.time_out()
            return Outcome(
                ok=False,
                error_type="FunctionTimeoutError",
                message=f"input {idx} of {call_id} ran past its timeout of {self.timeout:g} s; {stopped}",
                duration=time.monotonic() - started,
                runner_lost=True,
            )
        except (OSError, ValueError):  # the pipe or socket broke, stop() closed it meanwhile, or a frame was bad
            return self.lost(started, idx)
        finally:
            self.finish_input()

    @abc.abstractmethod
    def send_frame(self, kind: Kind, header: dict[str, Any], body: bytes, deadline: float) -> None:
        """Send one frame to the runner (TimeoutError at ``deadline``)."""

    @abc.abstractmethod
    def read_frame(self, deadline: float) -> Frame | None:
        """The runner's next frame (TimeoutError at ``deadline``, keeping a partial frame); None at its end."""

    @abc.abstractmethod
    def lost(self, started: float, idx: int) -> Outcome:
        """Stop the runner, which died under input ``idx``, and describe how (``runner_lost``)."""

    @abc.abstractmethod
    def time_out(self) -> str:
        """Stop the runner of an input that ran past its timeout; say what was stopped."""

    def begin_input(self, on_log: LogSink | None) -> bool:
        """Get ready for an input whose logs go to ``on_log``; False when the runner is gone already."""
        return True

    def end_input(self) -> None:  # noqa: B027 - optional hook
        """After the input's output frame: take in what else it wrote (its stderr)."""

    def finish_input(self) -> None:  # noqa: B027 - optional hook
        """At the end of every input, however it ended."""


class Runner(FrameLink):
    spec: RunnerSpec
    started_in: float | None = None  # seconds its start took, until the first input takes it (then None)
    container_id: str | None = None  # ct-...: its name in `minimodal container ...` (set by the pool)
    started_at: float | None = None  # time.time() when it started

    @property
    def timeout(self) -> float:
        return self.spec.timeout

    _shared: Any = None  # SharedCalls: workers/runtimes/shared.py call_shared makes it at the first input

    @property
    def inputs_in_flight(self) -> int:
        return self._shared.in_flight if self._shared is not None else 0

    @property
    def broken(self) -> bool:
        """A shared runner that died or timed out: no new input may be given to it."""
        return bool(self._shared is not None and self._shared.broken)

    def load(self, spec: RunnerSpec) -> None:
        """Load ``spec``'s function into this blank runner (from :meth:`Runtime.start_blank`), binding it to
        ``spec.key`` for the rest of its life; raise RunnerStartError (the runner is then stopped)."""
        raise NotImplementedError(f"{type(self).__name__} cannot start blank")

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the runner and release what it holds. Safe to call twice."""


class RunnerStartError(Exception):
    """Raised when a runner cannot start or its function cannot be loaded.

    ``infrastructure`` is True when the platform failed (no process or container could be started):
    the worker's circuit breaker counts those, and the inputs are tried elsewhere. False when the
    user's function failed to load in a runner that did start: that is the call's own error.
    ``error_type`` names the :mod:`minimodal.exception` class the caller gets (e.g. ``ImageNotFoundError``).
    """

    def __init__(
        self,
        message: str,
        traceback: str | None = None,
        *,
        infrastructure: bool = True,
        error_type: str = "RemoteError",
    ) -> None:
        super().__init__(message)
        self.traceback = traceback
        self.infrastructure = infrastructure
        self.error_type = error_type


class Runtime(abc.ABC):
    name: str

    @abc.abstractmethod
    def start(self, spec: RunnerSpec) -> Runner:
        """Start a warm runner with the function loaded; raise RunnerStartError on failure."""

    def blank_key(self, spec: RunnerSpec) -> str | None:
        """What a blank runner must share with ``spec`` to be able to load it (what the process or container
        is started with: image, limits, network); None when runners of ``spec`` cannot be started blank."""
        return None

    def start_blank(self, template: RunnerSpec) -> Runner:
        """Start a runner with no function loaded, as a runner of ``template`` would start; :meth:`Runner.load`
        binds it to one function version. Raise RunnerStartError on failure."""
        raise NotImplementedError(f"the {self.name} runtime cannot start blank runners")

    def shutdown(self) -> None:  # noqa: B027 - optional hook; most runtimes hold nothing runtime-wide
        """Release runtime-wide resources (runners are stopped by the pool)."""
