"""The process runtime: each runner is a long-lived ``python -m minimodal._runner`` subprocess.

It isolates user code in its own process (a crash or ``os._exit`` costs that runner only) but not
in a container: resource limits other than ``timeout`` need the Docker runtime.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any

from minimodal._runner import write_frame

from .base import LogSink, Outcome, Runner, RunnerSpec, RunnerStartError, Runtime

_PREFIX_SIZE = 9


class _FrameReader:
    """Reads runner frames from a pipe with a deadline (select + os.read, no threads)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buffer) < n:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.fd, max(65536, n - len(self.buffer)))
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read(self, deadline: float) -> tuple[bytes, dict[str, Any], bytes] | None:
        if not self._fill(_PREFIX_SIZE, deadline):
            return None
        kind, hlen, blen = struct.unpack(">cII", self.buffer[:_PREFIX_SIZE])
        if not self._fill(_PREFIX_SIZE + hlen + blen, deadline):
            return None
        head = bytes(self.buffer[_PREFIX_SIZE : _PREFIX_SIZE + hlen])
        body = bytes(self.buffer[_PREFIX_SIZE + hlen : _PREFIX_SIZE + hlen + blen])
        del self.buffer[: _PREFIX_SIZE + hlen + blen]
        return kind, json.loads(head), body


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ProcessRunner(Runner):
    def __init__(self, spec: RunnerSpec, python: str, startup_timeout: float) -> None:
        self.spec = spec
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [python, "-m", "minimodal._runner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a signal to the worker's group does not reach user code
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin
        self._reader = _FrameReader(self.process.stdout.fileno())
        try:
            write_frame(self._stdin, b"F", {}, spec.code)
            frame = self._reader.read(time.monotonic() + startup_timeout)
        except (TimeoutError, BrokenPipeError) as exc:
            self.stop()
            raise RunnerStartError(f"the runner did not start within {startup_timeout} s") from exc
        if frame is None or frame[0] != b"R":
            self.stop()
            header = frame[1] if frame else {}
            why = header.get("repr") or f"the runner {_describe_exit(self.process.poll())}"
            raise RunnerStartError(
                f"the function could not be loaded in the runner: {why}",
                header.get("traceback"),
            )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, payload: bytes, *, call_id: str, idx: int, on_log: LogSink | None = None) -> Outcome:
        started = time.monotonic()
        deadline = started + self.spec.timeout
        try:
            write_frame(self._stdin, b"C", {"call_id": call_id, "idx": idx}, payload)
            while True:
                frame = self._reader.read(deadline)
                if frame is None:
                    return self._lost(started, idx)
                kind, header, body = frame
                if kind == b"L":
                    if on_log is not None:
                        on_log(header.get("stream", "stdout"), body.decode("utf-8", "replace"))
                    continue
                if kind == b"O":
                    duration = time.monotonic() - started
                    if header.get("ok"):
                        return Outcome(ok=True, data=body, duration=duration)
                    return Outcome(
                        ok=False,
                        data=body,
                        message=header.get("repr"),
                        traceback=header.get("traceback"),
                        duration=duration,
                    )
        except BrokenPipeError:
            return self._lost(started, idx)
        except TimeoutError:
            self.stop()
            return Outcome(
                ok=False,
                error_type="FunctionTimeoutError",
                message=f"input {idx} of {call_id} ran past its timeout of {self.spec.timeout:g} s and was stopped",
                duration=time.monotonic() - started,
                runner_lost=True,
            )

    def _lost(self, started: float, idx: int) -> Outcome:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.stop()
        return Outcome(
            ok=False,
            error_type="RemoteError",
            message=f"the function's process {_describe_exit(code)} while running input {idx}; "
            "the next call starts a fresh process",
            duration=time.monotonic() - started,
            runner_lost=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass


class ProcessRuntime(Runtime):
    """Runners are subprocesses of the worker, using the worker's Python."""

    name = "process"

    def __init__(self, python: str | None = None, startup_timeout: float = 60.0) -> None:
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout

    def start(self, spec: RunnerSpec) -> Runner:
        return ProcessRunner(spec, self.python, self.startup_timeout)
