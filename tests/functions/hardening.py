"""Probes of the container sandbox, run inside runner containers (standard library only; sent by value)."""

from __future__ import annotations

import errno
import os
import socket
import time


def sandbox() -> dict[str, object]:
    """What the sandbox looks like from inside: user, capabilities, limits, processes, files, network."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    processes = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                processes[int(pid)] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
    memory = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        if os.path.exists(path):
            memory = open(path).read().strip()
    return {
        "uid": os.getuid(),
        "capabilities": int(status["CapEff"].strip(), 16),
        "no_new_privs": status.get("NoNewPrivs", "").strip(),
        "memory_limit": memory,
        "processes": processes,
        "docker_socket": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
        "interfaces": sorted(os.listdir("/sys/class/net")),
    }


def write_probe(paths: list[str]) -> dict[str, str]:
    """Try to create a file at each path: ``ok`` or the errno name."""
    found = {}
    for path in paths:
        try:
            with open(path, "w") as f:
                f.write("x")
            os.remove(path)
            found[path] = "ok"
        except OSError as exc:
            found[path] = errno.errorcode.get(exc.errno or 0, str(exc))
    return found


def fork_bomb(limit: int) -> tuple[int, str | None]:
    """Fork sleeping children until the kernel refuses (or ``limit``); kill them; return (forked, errno)."""
    children: list[int] = []
    refused = None
    try:
        for _ in range(limit):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        refused = errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return len(children), refused


def connect(host: str, port: int) -> str:
    """Open a TCP connection: ``connected`` or the errno name of the failure."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class Plant:
    """Unpickling this appends the unpickling process's pid to ``path`` (``pad`` makes it travel as a blob)."""

    def __init__(self, path: str, pad: int = 0) -> None:
        self.path, self.pad = path, pad

    def __reduce__(self):  # type: ignore[no-untyped-def]
        code = f"import os\nwith open({self.path!r}, 'a') as f: f.write(str(os.getpid()) + chr(10))\n"
        return (exec, (code + "#" + "x" * self.pad,))


def pid_after(_argument: object) -> int:
    return os.getpid()


def make_plant(path: str) -> Plant:
    return Plant(path)


def plants(path: str, n: int):  # type: ignore[no-untyped-def]
    for _ in range(n):
        yield Plant(path)


def pid_after_failing_once(_argument: object, counter: str) -> int:
    """Fails its first attempt (so the input is retried through the dispatcher), then answers its pid."""
    attempts = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    with open(counter, "w") as f:
        f.write(str(attempts))
    if attempts == 1:
        raise RuntimeError("first attempt fails")
    return os.getpid()


def big_items(sizes: list[int]):  # type: ignore[no-untyped-def]
    for size in sizes:
        yield b"x" * size


def flood(lines: int, width: int) -> str:
    """Print ``lines`` lines of ``width`` characters, then one long line, then return."""
    for i in range(lines):
        print(f"{i:08d}" + "y" * width, flush=True)
    print("z" * 50_000, flush=True)
    return "flooded"
