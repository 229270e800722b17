"""The process runtime: each runner is a long-lived ``python -m minimodal._runner`` subprocess.

It isolates user code in its own process (a crash or ``os._exit`` costs that runner only) but not
in a container: resource limits other than ``timeout`` need the Docker runtime.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from minimodal._frames import Frame, Kind, take_frame, write_frame

from .base import LogSink, Outcome, Runner, RunnerSpec, RunnerStartError, Runtime

GRACEFUL_EXIT_SECONDS = 2.0  # an idle runner told to stop gets this long to run its exit hooks


class _FrameReader:
    """Reads runner frames from its stdout with a deadline, and its stderr on the way (select, no threads).

    What arrives on stderr goes to ``on_stderr``: text written straight to file descriptors 1 and 2, and
    a dying interpreter's last words.
    """

    def __init__(self, fd: int, stderr_fd: int, on_stderr: Callable[[str], None]) -> None:
        self.fd, self.stderr_fd = fd, stderr_fd
        self.on_stderr = on_stderr
        self.buffer = bytearray()
        self.stderr_open = True

    def _read_stderr(self) -> None:
        try:
            chunk = os.read(self.stderr_fd, 65536)
        except OSError:
            chunk = b""
        if chunk:
            self.on_stderr(chunk.decode("utf-8", "replace"))
        else:
            self.stderr_open = False

    def drain_stderr(self, wait: float = 0.0) -> None:
        """Pass on what stderr holds now (waiting up to ``wait`` for the first chunk)."""
        while self.stderr_open:
            ready, _, _ = select.select([self.stderr_fd], [], [], wait)
            if not ready:
                return
            self._read_stderr()
            wait = 0.0

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buffer) < n:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            fds = [self.fd, self.stderr_fd] if self.stderr_open else [self.fd]
            ready, _, _ = select.select(fds, [], [], wait)
            if not ready:
                raise TimeoutError
            if self.stderr_fd in ready:
                self._read_stderr()
            if self.fd not in ready:
                continue
            chunk = os.read(self.fd, max(65536, n - len(self.buffer)))
            if not chunk:
                self.drain_stderr(0.5)
                return False
            self.buffer += chunk
        return True

    def read(self, deadline: float) -> Frame | None:
        return take_frame(self.buffer, lambda n: self._fill(n, deadline))


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
    def __init__(self, spec: RunnerSpec, python: str, startup_timeout: float, *, blank: bool = False) -> None:
        self.spec = spec
        self.startup_timeout = startup_timeout
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen(
                [python, "-m", "minimodal._runner"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # a signal to the worker's group does not reach user code
            )
        except OSError as exc:
            raise RunnerStartError(f"cannot start the runner process {python}: {exc}") from exc
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self._stdin = self.process.stdin
        self._on_log: LogSink | None = None  # the current input's log sink, for what arrives on stderr
        self._busy = False  # inside call(): a stop then is a kill (timeout), not a graceful exit
        self._reader = _FrameReader(self.process.stdout.fileno(), self.process.stderr.fileno(), self._stderr_text)
        if not blank:
            self.load(spec)

    def load(self, spec: RunnerSpec) -> None:
        """Send the function (``S`` and ``F`` frames) and wait for the runner's ``R``: bound to ``spec`` now."""
        self.spec = spec
        try:
            if spec.source:
                write_frame(self._stdin, Kind.SOURCE, {}, spec.source)
            write_frame(self._stdin, Kind.FUNCTION, spec.load_header(), spec.code)
            frame = self._reader.read(time.monotonic() + self.startup_timeout)
        except (TimeoutError, BrokenPipeError) as exc:
            self.stop()
            raise RunnerStartError(f"the runner did not start within {self.startup_timeout} s") from exc
        if frame is None or frame[0] != Kind.READY:
            self.stop()
            header = frame[1] if frame else {}
            why = header.get("repr") or f"the runner {_describe_exit(self.process.poll())}"
            raise RunnerStartError(
                f"the function could not be loaded in the runner: {why}",
                header.get("traceback"),
                infrastructure=not header,  # a load error the runner reported is the user's
            )

    def _stderr_text(self, text: str) -> None:
        """Stderr of the current input goes to its logs; between inputs, to the worker's own stderr."""
        if self._on_log is not None:
            self._on_log("stderr", text)
        else:
            sys.stderr.write(text)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def begin_input(self, on_log: LogSink | None) -> bool:
        self._busy = True
        self._reader.drain_stderr()  # what came between inputs belongs to none of them
        self._on_log = on_log
        return True

    def end_input(self) -> None:
        self._reader.drain_stderr()  # written before the output frame, so it is in the pipe already

    def finish_input(self) -> None:
        self._on_log = None
        self._busy = False

    def time_out(self) -> str:
        self.stop()
        return "its process was stopped"

    def send_frame(self, kind: Kind, header: dict[str, Any], body: bytes, deadline: float) -> None:
        write_frame(self._stdin, kind, header, body)

    def read_frame(self, deadline: float) -> Frame | None:
        return self._reader.read(deadline)

    def lost(self, started: float, idx: int) -> Outcome:
        return self._lost(started, idx)

    def _lost(self, started: float, idx: int) -> Outcome:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._reader.drain_stderr(0.5)  # its last words belong to this input
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
        busy = self._busy or self.inputs_in_flight > 0
        if self.process.poll() is None and self.process.stdin is not None and not busy:
            # End of input first: the runner returns and runs its exit hooks (@minimodal.exit()); then kill.
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=GRACEFUL_EXIT_SECONDS)
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
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
        self._python_version: str | None = None

    @property
    def python_version(self) -> str:
        """The runners' Python major.minor (asked once of ``python`` when it is not this interpreter)."""
        if self._python_version is None:
            version = f"{sys.version_info[0]}.{sys.version_info[1]}"
            if self.python != sys.executable:
                try:
                    version = subprocess.run(
                        [self.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                        capture_output=True,
                        text=True,
                        timeout=30,
                        check=True,
                    ).stdout.strip()
                except (OSError, subprocess.SubprocessError):
                    version = ""  # unknown: the runners will not start either, and their start says why
            self._python_version = version
        return self._python_version

    def blank_key(self, spec: RunnerSpec) -> str | None:
        # Every runner process starts the same way (the worker's Python and environment); what a function
        # refuses to run in a process is refused by start(), never by a blank one.
        return None if spec.block_network or spec.mounts else "process"

    def start_blank(self, template: RunnerSpec) -> Runner:
        return ProcessRunner(template, self.python, self.startup_timeout, blank=True)

    def start(self, spec: RunnerSpec) -> Runner:
        if spec.block_network:
            raise RunnerStartError(
                "block_network=True needs the Docker runtime (a runner process shares the worker's network); "
                "give the function an image and run a worker with Docker",
                infrastructure=False,
            )
        if spec.mounts:
            raise RunnerStartError(
                f"volumes ({', '.join(spec.mounts)}) are mounted in containers only, and this worker runs "
                "functions in processes; run a worker with Docker",
                infrastructure=False,
            )
        return ProcessRunner(spec, self.python, self.startup_timeout)
