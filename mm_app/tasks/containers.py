"""A worker's containers, as `minimodal container ...` and `minimodal shell` see them.

Every runner of the warm pools (a container of the Docker runtime, a runner process of the process
runtime) has an id ``ct-...``; the heartbeat lists them (user, app, function, started) in the worker's
info key, which is how the API answers ``GET /v1/containers`` without asking anyone.

What acts on one container goes to the worker that runs it as a **Redis request/reply**: the API
pushes a JSON request on ``mm:ctl:{worker}`` and waits on ``mm:ctlreply:{request}``. Not a Celery task
to the worker's own queue: the Celery threads are the worker's slots (the dispatcher reserves every
one of them), so a stop or an exec would wait behind the inputs it may be meant to stop; the control
thread answers at once, busy or not. Operations:

- ``stop``: stop the runner (an input running there ends ``runner_lost`` and is retried by its policy).
- ``exec``: run a command in it to the end (at most ``timeout`` s); its exit code and output.
- ``tty``: start a command on a pseudo-terminal in it, relayed through Redis: what the client types
  arrives on ``mm:tty:{session}:in``, what the process writes goes to ``mm:tty:{session}:out``,
  then an ``end`` entry with the exit code.
- ``sandbox``: start a runner of a function (its image, volumes and secrets) that takes no input, for
  ``minimodal shell``; it is stopped when its terminal session ends.

A process runner is no container: ``exec`` there runs the command on the worker's host as the worker's
user, which is what the function's own code can do there anyway (the process runtime isolates nothing;
see SECURITY.md).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pty
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from minimodal import protocol
from minimodal.exception import Error, InvalidError, NotFoundError
from workers.runtimes.base import Runner

if TYPE_CHECKING:
    from .context import WorkerContext

logger = logging.getLogger("minimodal.worker.containers")

REPLY_TTL = 60  # seconds an answer waits for the API to read it
TTY_TTL = 3600  # seconds a terminal session's keys live after their last use
TTY_IDLE_SECONDS = 3600  # a terminal nobody types into for this long is closed
EXEC_OUTPUT_LIMIT = 1024 * 1024  # bytes of an exec's output kept for the answer


def describe(ctx: WorkerContext) -> list[dict[str, Any]]:
    """The worker's live runners, for its heartbeat."""
    out = []
    for runtime, runner in _runners(ctx):
        labels = runner.spec.labels
        out.append(
            {
                "id": runner.container_id,
                "user": labels.get("user"),
                "app": labels.get("app"),
                "function": labels.get("function"),
                "function_id": labels.get("function_id"),
                "runtime": runtime,
                "started_at": runner.started_at,
                "sandbox": runner in _sandboxes.values(),
            }
        )
    return out


_sandboxes: dict[str, Runner] = {}  # ct id -> runner started for `minimodal shell` (in no pool)
_attached: set[str] = set()  # sandboxes a terminal was opened in (the others are stopped after a while)
SANDBOX_ATTACH_SECONDS = 600  # a sandbox no terminal opens in within this long is stopped


def _runners(ctx: WorkerContext) -> list[tuple[str, Runner]]:
    found = [(name, runner) for name, pool in ctx.pools.items() for runner in pool.all_runners()]
    found += [(("docker" if r.spec.image else "process"), r) for r in list(_sandboxes.values()) if r.alive]
    return [(name, r) for name, r in found if r.container_id]


def _find(ctx: WorkerContext, container_id: str, user: str) -> Runner:
    for _, runner in _runners(ctx):
        if runner.container_id == container_id and runner.spec.labels.get("user") == user:
            return runner
    raise NotFoundError(f"no running container {container_id!r}")


class ControlServer:
    """The worker's control thread: one request at a time off its list, each handled in a thread of its own."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._serve, name="mm-control", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        for runner in list(_sandboxes.values()):
            runner.stop()
        _sandboxes.clear()

    def _serve(self) -> None:
        key = protocol.control_key(self.ctx.worker_id)
        while not self._stop.is_set():
            try:
                item = self.ctx.redis.blpop([key], timeout=1)
            except Exception:  # noqa: BLE001 - Redis restarting: try again
                logger.warning("control list read failed", exc_info=True)
                self._stop.wait(1)
                continue
            if item is not None:
                threading.Thread(target=self._handle, args=(item[1],), name="mm-control-op", daemon=True).start()

    def _handle(self, raw: bytes) -> None:
        try:
            request = json.loads(raw)
        except ValueError:
            return
        try:
            answer = self._answer(request)
        except Error as exc:
            answer = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        except Exception as exc:  # noqa: BLE001 - the API shows it; the worker logs it
            logger.exception("control request %s failed", request.get("op"))
            answer = {"error": {"type": "ServiceError", "message": f"the worker failed: {exc}"}}
        if request.get("op") in ("sandbox", "stop"):
            self.ctx._beat_now.set()  # the container list changed: say so in a heartbeat now
        reply = protocol.control_reply_key(str(request.get("id")))
        pipe = self.ctx.redis.pipeline()
        pipe.rpush(reply, json.dumps(answer))
        pipe.expire(reply, REPLY_TTL)
        pipe.execute()

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op, user = request.get("op"), str(request.get("user"))
        if op == "sandbox":
            return self._sandbox(request["function_id"], user)
        runner = _find(self.ctx, str(request.get("container")), user)
        if op == "stop":
            _sandboxes.pop(runner.container_id or "", None)
            runner.stop()
            return {"stopped": runner.container_id}
        if op == "exec":
            return _exec(runner, list(request["cmd"]), float(request.get("timeout", 60)))
        if op == "tty":
            session = str(request["session"])
            env = self._secrets(runner) if request.get("secrets") else {}
            opened = _open_tty(runner, list(request["cmd"]), env, request.get("size"))
            _attached.add(runner.container_id or "")
            threading.Thread(
                target=_relay,
                args=(self.ctx, session, opened, runner if request.get("stop_after") else None),
                name="mm-tty",
                daemon=True,
            ).start()
            return {"session": session}
        raise InvalidError(f"unknown container operation {op!r}")

    def _secrets(self, runner: Runner) -> dict[str, str]:
        from .execute import _secret_env

        spec = self.ctx.function(runner.spec.labels.get("function_id", ""))
        if spec is None:
            return {}
        return _secret_env(self.ctx, spec.options.get("secrets"), spec.user_id) or {}

    def _sandbox(self, function_id: str, user: str) -> dict[str, Any]:
        """A runner of the function (image, volumes synced and mounted) that no input is given to."""
        from . import volumes

        spec = self.ctx.function(function_id)
        if spec is None or str(spec.user_id) != user:
            raise NotFoundError(f"no function {function_id!r}")
        pool = self.ctx.pool_for(spec)
        if pool is None:
            raise InvalidError("this worker cannot run the function's image (no Docker runtime)")
        for volume_id in (spec.options.get("volumes") or {}).values():
            volumes.cache(self.ctx.redis).sync(volume_id)
        runner = pool.runtime.start(self.ctx.runner_spec(spec))
        runner.container_id, runner.started_at = protocol.new_id("ct"), time.time()
        _sandboxes[runner.container_id] = runner
        timer = threading.Timer(SANDBOX_ATTACH_SECONDS, _stop_unattached, args=(runner,))
        timer.daemon = True
        timer.start()
        return {"container_id": runner.container_id}


def _stop_unattached(runner: Runner) -> None:
    """A sandbox whose client never opened its terminal (it crashed, say) must not live for ever."""
    if runner.container_id not in _attached and _sandboxes.pop(runner.container_id or "", None) is not None:
        runner.stop()


def _exec(runner: Runner, cmd: list[str], timeout: float) -> dict[str, Any]:
    if not cmd:
        raise InvalidError("give a command to run")
    container = getattr(runner, "container", None)
    if container is not None:
        result = container.exec_run(cmd, demux=False)
        output = (result.output or b"")[:EXEC_OUTPUT_LIMIT]
        return {"exit_code": result.exit_code, "output": base64.b64encode(output).decode()}
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise InvalidError(f"no such command: {cmd[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InvalidError(f"the command did not end within {timeout:g} s") from exc
    output = (done.stdout + done.stderr)[:EXEC_OUTPUT_LIMIT]
    return {"exit_code": done.returncode, "output": base64.b64encode(output).decode()}


class _Terminal:
    """A process on a pseudo-terminal: read, write, resize, wait for its exit code, close."""

    def __init__(
        self,
        read: Callable[[], bytes],
        write: Callable[[bytes], object],  # what it answers (os.write counts bytes) is not used
        resize: Callable[[int, int], None],
        exit_code: Callable[[], int | None],
        close: Callable[[], None],
    ) -> None:
        self.read, self.write, self.resize, self.exit_code, self.close = read, write, resize, exit_code, close


def _open_tty(runner: Runner, cmd: list[str], env: dict[str, str], size: Any) -> _Terminal:
    container = getattr(runner, "container", None)
    if container is not None:
        api = container.client.api
        exec_id = api.exec_create(
            container.id, cmd, stdin=True, tty=True, environment={"TERM": "xterm", **env}, workdir="/tmp"
        )["Id"]
        sock = api.exec_start(exec_id, tty=True, socket=True)
        raw = getattr(sock, "_sock", sock)

        def resize(rows: int, cols: int) -> None:
            with contextlib.suppress(Exception):
                api.exec_resize(exec_id, height=rows, width=cols)

        def read() -> bytes:
            try:
                return raw.recv(65536)
            except OSError:
                return b""

        terminal = _Terminal(
            read, raw.sendall, resize, lambda: api.exec_inspect(exec_id).get("ExitCode"), lambda: _close(raw)
        )
    else:
        master, slave = pty.openpty()
        process = subprocess.Popen(
            cmd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_take_terminal,
            env={**os.environ, "TERM": "xterm", **env},
            close_fds=True,
        )
        os.close(slave)

        def read_process() -> bytes:
            try:
                return os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return b""

        def resize_process(rows: int, cols: int) -> None:
            import fcntl
            import struct
            import termios

            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def close_process() -> None:
            if process.poll() is None:
                process.kill()
            process.wait()
            with contextlib.suppress(OSError):
                os.close(master)

        terminal = _Terminal(
            read_process, lambda data: os.write(master, data), resize_process, process.wait, close_process
        )
    if isinstance(size, list) and len(size) == 2:
        terminal.resize(int(size[0]), int(size[1]))
    return terminal


def _take_terminal() -> None:
    """In the child, after setsid: make the pseudo-terminal on fd 0 its controlling terminal (job control)."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _close(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _relay(ctx: WorkerContext, session: str, terminal: _Terminal, sandbox: Runner | None) -> None:
    """Copy the terminal's output to the session's stream and the client's input to the terminal, until it ends."""
    redis, out_key, in_key = ctx.redis, protocol.tty_out_key(session), protocol.tty_in_key(session)
    ended = threading.Event()

    def pump_out() -> None:
        try:
            while data := terminal.read():
                redis.xadd(out_key, {"d": data}, maxlen=10000, approximate=True)
                redis.expire(out_key, TTY_TTL)
        finally:
            ended.set()

    threading.Thread(target=pump_out, name="mm-tty-out", daemon=True).start()
    last_input = time.monotonic()
    try:
        while not ended.is_set() and time.monotonic() - last_input < TTY_IDLE_SECONDS:
            item = redis.blpop([in_key], timeout=1)
            if item is None:
                continue
            last_input = time.monotonic()
            message = json.loads(item[1])
            if "in" in message:
                terminal.write(base64.b64decode(message["in"]))
            elif "resize" in message:
                terminal.resize(*message["resize"])
            elif message.get("close"):
                break
    except Exception:  # noqa: BLE001 - the session ends; the client sees its end
        logger.warning("terminal session %s failed", session, exc_info=True)
    finally:
        ended.wait(2)
        code = None
        with contextlib.suppress(Exception):
            code = terminal.exit_code() if ended.is_set() else None
        terminal.close()
        redis.xadd(out_key, {"end": "" if code is None else str(code)})
        redis.expire(out_key, TTY_TTL)
        redis.delete(in_key)
        if sandbox is not None:
            _sandboxes.pop(sandbox.container_id or "", None)
            _attached.discard(sandbox.container_id or "")
            sandbox.stop()
