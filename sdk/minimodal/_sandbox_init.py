"""The program a sandbox's container runs as its command, and the helper its file operations exec.

Standard library only: it runs in any image with a Python (every MiniModal image has one), bind-mounted
read-only, as ``python -u /opt/mm/sandbox/init.py MODE ...``.

``init [CMD...]`` (the container's command) reads frames from its stdin, which is the worker's attach
socket: first one JSON frame with the environment (secrets stay out of the container's configuration),
then the entrypoint's stdin, each frame a 4-byte big-endian length and that many bytes; a frame of
length 0 closes the entrypoint's stdin. It runs ``CMD`` (or waits forever when there is none) in its
own session with fds 1 and 2 inherited, and exits with its exit code (128 + signal when killed). The
end of its own stdin means the worker is gone: it kills the entrypoint's session and exits 137, so a
worker killed with SIGKILL leaves no sandbox running (the container is auto-removed).

``exec SECONDS CMD...`` runs ``CMD`` with a deadline: past it, the command's session is killed and the
exit code is 124 (as coreutils ``timeout``).

``read PATH``, ``write PATH w|a``, ``ls PATH``, ``mkdir PATH 0|1``, ``rm PATH 0|1`` are the file
operations of ``Sandbox.open/ls/mkdir/rm``: data goes through stdout and stdin; a failure prints one
JSON line ``{"type", "message"}`` to stderr and exits 3.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading

_LEN = struct.Struct(">I")
FS_ERROR_EXIT = 3
TIMEOUT_EXIT = 124


def _read_exact(fd: int, n: int) -> bytes | None:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def _read_frame(fd: int) -> bytes | None:
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size == 0:
        return b""
    return _read_exact(fd, size)


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def init(cmd: list[str]) -> int:
    env_frame = _read_frame(0)
    if env_frame is None:
        return 137
    env = {**os.environ, **json.loads(env_frame or b"{}")}
    if not cmd:  # no entrypoint: the sandbox lives for its execs until it is ended
        cmd = [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:
        print(f"minimodal: cannot run {cmd[0]!r}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    assert proc.stdin is not None
    stdin = proc.stdin

    def feed() -> None:
        while True:
            frame = _read_frame(0)
            if frame is None:  # the worker is gone: nobody may use this sandbox any more
                _kill_session(proc)
                os._exit(137)
            if frame == b"":
                try:
                    stdin.close()
                except OSError:
                    pass
                continue
            try:
                stdin.write(frame)
                stdin.flush()
            except (OSError, ValueError):  # the entrypoint closed its stdin: drop what it would not read
                pass

    threading.Thread(target=feed, daemon=True).start()
    code = _code(proc.wait())
    _kill_session(proc)  # what the entrypoint left behind in its session ends with it
    return code


def run_with_deadline(seconds: float, cmd: list[str]) -> int:
    try:
        proc = subprocess.Popen(cmd, start_new_session=True)
    except OSError as exc:
        print(f"minimodal: cannot run {cmd[0]!r}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    try:
        return _code(proc.wait(timeout=seconds))
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        proc.wait()
        return TIMEOUT_EXIT


def _fail(kind: str, message: str) -> int:
    print(json.dumps({"type": kind, "message": message}), file=sys.stderr, flush=True)
    return FS_ERROR_EXIT


def files(op: str, path: str, arg: str) -> int:
    try:
        if op == "read":
            with open(path, "rb") as source:
                shutil.copyfileobj(source, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
        elif op == "write":
            with open(path, "ab" if arg == "a" else "wb") as target:
                shutil.copyfileobj(sys.stdin.buffer, target, 1 << 20)
        elif op == "ls":
            print(json.dumps(sorted(os.listdir(path))))
        elif op == "mkdir":
            os.makedirs(path, exist_ok=True) if arg == "1" else os.mkdir(path)
        elif op == "rm":
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path) if arg == "1" else os.rmdir(path)
            else:
                os.remove(path)
        else:
            return _fail("InvalidError", f"unknown file operation {op!r}")
    except FileNotFoundError:
        return _fail("NotFound", f"no such file or directory: {path}")
    except IsADirectoryError:
        return _fail("IsADirectory", f"is a directory: {path}")
    except NotADirectoryError:
        return _fail("NotADirectory", f"not a directory: {path}")
    except FileExistsError:
        return _fail("Exists", f"already exists: {path}")
    except OSError as exc:
        return _fail("OSError", f"{path}: {exc.strerror or exc}")
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        return _fail("InvalidError", "give a mode: init, exec, read, write, ls, mkdir, rm")
    mode, rest = argv[0], argv[1:]
    if mode == "init":
        return init(rest)
    if mode == "exec":
        return run_with_deadline(float(rest[0]), rest[1:])
    return files(mode, rest[0], rest[1] if len(rest) > 1 else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
