"""Probes of the container sandbox, run inside runner containers (standard library only; sent by value)."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import threading
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
    if memory is None:  # gVisor shows no cgroup files; its memory is the container's limit
        total = [line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal:")]
        memory = str(int(total[0]) * 1024) if total else None
    libc = ctypes.CDLL(None, use_errno=True)
    return {
        "uid": os.getuid(),
        "capabilities": int(status["CapEff"].strip(), 16),
        "no_new_privs": str(libc.prctl(39, 0, 0, 0, 0)),  # PR_GET_NO_NEW_PRIVS (gVisor omits it from status)
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


# ---- Escape attempts: each returns what happened, as errno names where the kernel refused ----------------


def _errno(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(result: int) -> str:
    return "ok" if result == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def processes(marker: str) -> dict[str, object]:
    """Every process this function can see, and whether any of their environments holds ``marker``."""
    seen, leaked = {}, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            seen[int(pid)] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
            leaked = leaked or marker.encode() in open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
    return {"processes": seen, "leaked": leaked, "pid1": seen.get(1, "")}


def read_paths(paths: list[str]) -> dict[str, str]:
    """Read each path: ``read`` or the errno name."""
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(16)
            found[path] = "read"
        except OSError as exc:
            found[path] = _errno(exc)
    return found


def privileged_calls() -> dict[str, str]:
    """mount, raw and packet sockets, a kernel module, the clock: what each attempt gave."""
    libc = _libc()
    found = {"mount": _call(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))}
    for name, family, kind in (("raw", socket.AF_INET, socket.SOCK_RAW), ("packet", socket.AF_PACKET, socket.SOCK_RAW)):
        try:
            socket.socket(family, kind, socket.IPPROTO_ICMP if name == "raw" else 0).close()
            found[name] = "opened"
        except OSError as exc:
            found[name] = _errno(exc)
    found["init_module"] = _call(libc.syscall(175, b"\0" * 64, 64, b""))  # x86_64 init_module
    found["finit_module"] = _call(libc.syscall(313, 0, b"", 0))  # x86_64 finit_module, on stdin
    timespec = (ctypes.c_long * 2)(int(time.time()) + 86400 * 365, 0)
    found["clock_settime"] = _call(libc.clock_settime(0, ctypes.byref(timespec)))  # CLOCK_REALTIME, a year on
    found["settimeofday"] = _call(libc.settimeofday(ctypes.byref(timespec), None))
    found["unshare"] = _call(libc.unshare(0x10000000))  # CLONE_NEWUSER: a new user namespace
    return found


def ptrace(pids: list[int]) -> dict[int, str]:
    """PTRACE_ATTACH each pid (detaching at once if it worked): ``attached`` or the errno name."""
    libc = _libc()
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    found = {}
    for pid in pids:
        if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
            libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
            found[pid] = "attached"
        else:
            found[pid] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return found


def devices() -> dict[str, str]:
    """Open every entry under /dev for reading and writing: ``opened`` or the errno name."""
    found = {}
    for root, dirs, files in os.walk("/dev"):
        dirs[:] = [d for d in dirs if d not in ("fd", "pts", "shm", "mqueue")]
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            try:
                os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY))
                found[path] = "opened"
            except OSError as exc:
                found[path] = _errno(exc)
    return found


def kill_parent(sig: str) -> dict[str, object]:
    """Send ``sig`` to the runner's parent (docker-init, the container's pid 1)."""
    parent = os.getppid()
    try:
        os.kill(parent, getattr(signal, sig))
        sent = "sent"
    except OSError as exc:
        sent = _errno(exc)
    time.sleep(0.5)
    return {"parent": parent, "sent": sent, "pid": os.getpid()}


def fill(path: str, limit_mib: int) -> tuple[int, str | None]:
    """Write 1 MiB blocks to ``path`` until refused or ``limit_mib``: (MiB written, errno); the file is removed."""
    written, refused = 0, None
    block = b"x" * (1 << 20)
    try:
        with open(path, "wb") as f:
            while written < limit_mib:
                f.write(block)
                f.flush()
                written += 1
    except OSError as exc:
        refused = _errno(exc)
    finally:
        if os.path.exists(path):
            os.remove(path)
    return written, refused


def sparse(path: str, size: int, limit_mib: int) -> dict[str, object]:
    """Make a sparse file of ``size`` bytes, then write real blocks across it until refused."""
    try:
        with open(path, "wb") as f:
            f.truncate(size)
            apparent = os.fstat(f.fileno()).st_size
            written, refused = 0, None
            block = b"y" * (1 << 20)
            step = max(1 << 20, size // max(1, limit_mib))
            try:
                for i in range(limit_mib):
                    f.seek(i * step)
                    f.write(block)
                    f.flush()
                    written += 1
            except OSError as exc:
                refused = _errno(exc)
    except OSError as exc:
        return {"created": _errno(exc)}
    finally:
        if os.path.exists(path):
            os.remove(path)
    return {"created": "ok", "apparent": apparent, "written": written, "refused": refused}


def memory_bomb(mib: int) -> int:
    """Hold ``mib`` MiB of touched memory (more than the container may have)."""
    chunks = [bytearray(1 << 20) for _ in range(mib)]
    return len(chunks)


def listen() -> int:
    """Listen on a TCP port of every address in the container, accepting in a thread; returns the port."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)

    def accept() -> None:
        while True:
            server.accept()[0].close()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def connect_all(targets: list[tuple[str, int]], timeout: float = 3) -> dict[str, str]:
    """Try each (host, port): ``connected`` or the errno name (``timeout`` when nothing answered)."""
    found = {}
    for host, port in targets:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                found[f"{host}:{port}"] = "connected"
        except TimeoutError:
            found[f"{host}:{port}"] = "timeout"
        except OSError as exc:
            found[f"{host}:{port}"] = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return found


def network_view() -> dict[str, object]:
    """The container's own address and default gateway, as code inside can find them."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("203.0.113.1", 9))  # no packet is sent: this only picks the route
        address = probe.getsockname()[0]
    except OSError:
        address = None
    finally:
        probe.close()
    gateway = None
    try:
        for line in open("/proc/net/route").read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                gateway = socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
    except OSError:
        pass
    try:
        resolved = socket.gethostbyname("deb.debian.org")
    except OSError as exc:
        resolved = f"unresolved: {exc}"
    return {"address": address, "gateway": gateway, "resolved": resolved}


def kernel() -> str:
    """The kernel release the function sees: the host's under runc, gVisor's ``4.4.0`` under runsc."""
    return os.uname().release
