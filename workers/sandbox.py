"""A sandbox's container on this worker's Docker engine: its entrypoint, its exec'd processes, their streams.

The container runs ``sdk/_sandbox_init.py`` (bind-mounted read-only) as its command, attached to the
worker's socket with ``stdin_once``: when the worker dies that socket closes, the init program kills
the entrypoint and exits, and Docker removes the container (``auto_remove``). Exec'd processes are
``docker exec`` sessions on their own hijacked sockets, read by one thread each; their output is handed
to callbacks chunk by chunk as it arrives (nothing waits for a line or for the end).

Unlike function runners, a sandbox's root file system is writable (``pip install`` in a sandbox is the
point) and its processes run as root, but with every capability dropped, no-new-privileges, a pids and
memory limit, and under the engine runtime the task names (``runc``; ``runsc`` or ``runsc-net`` for gVisor).
A networked sandbox joins the runners' bridge (workers/network.py) and its ports are published on the
host at ``publish_address``; a snapshot can be pushed to the cluster's registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests

import minimodal._sandbox_init

from .images import PullError, pull, push, registry_of
from .runtimes.docker import DEFAULT_MEMORY_LIMIT, DEFAULT_PIDS_LIMIT, LABEL

logger = logging.getLogger("minimodal.workers.sandbox")

INIT_PATH = "/opt/mm/sandbox/init.py"
SNAPSHOT_REPOSITORY = "minimodal/snapshot"
_MUX = struct.Struct(">BxxxL")  # a Docker stream chunk without a TTY: stream (1 stdout, 2 stderr), length
_LEN = struct.Struct(">I")
_DOCKER_ERRORS = (docker.errors.DockerException, requests.RequestException)

Output = Callable[[int, bytes | None], None]  # (fd, chunk); chunk None: that stream ended


class SandboxStartError(Exception):
    """The container could not be created or started (a missing image, Docker refusing)."""


@dataclass
class ContainerSpec:
    """What a sandbox's container is made of (from its record, with secrets decrypted)."""

    sandbox_id: str
    image: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    cpu: float | None = None
    memory: int | None = None  # MiB
    block_network: bool = False
    network: str | None = None  # the runners' bridge (workers/network.py); None: Docker's default bridge
    ports: list[int] = field(default_factory=list)  # container TCP ports to publish on the host
    publish_address: str = "127.0.0.1"  # the host address they are published on
    mounts: dict[str, str] = field(default_factory=dict)  # container path -> host path
    labels: dict[str, str] = field(default_factory=dict)
    runtime: str = ""  # the engine's runtime name (runc, runsc, runsc-net); "": Docker's default runtime


def _socket_of(wrapper: Any) -> socket.socket:
    return getattr(wrapper, "_sock", wrapper)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except OSError:
            return None
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def pump(sock: socket.socket, on_output: Output, *, tty: bool = False) -> None:
    """Read a Docker stream socket to its end, handing each chunk to ``on_output`` at once."""
    if tty:  # one raw stream: everything is stdout
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            on_output(1, chunk)
    else:
        while True:
            head = _read_exact(sock, _MUX.size)
            if head is None:
                break
            stream, size = _MUX.unpack(head)
            data = _read_exact(sock, size) if size else b""
            if data is None:
                break
            if stream in (1, 2) and data:
                on_output(stream, data)
    on_output(1, None)
    on_output(2, None)


def _close(wrapper: Any) -> None:
    sock = _socket_of(wrapper)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    response = getattr(wrapper, "_response", None)
    for closeable in (response, wrapper, sock):
        if closeable is not None:
            with contextlib.suppress(OSError, ValueError):
                closeable.close()


class ExecProcess:
    """One ``docker exec`` session: its output pumped by a thread, its stdin written to its socket."""

    def __init__(self, client: docker.DockerClient, exec_id: str, wrapper: Any, tty: bool) -> None:
        self.client, self.exec_id, self.tty = client, exec_id, tty
        self._wrapper = wrapper
        self._sock = _socket_of(wrapper)
        self._lock = threading.Lock()
        self.stdin_closed = False

    def start_pumping(self, on_output: Output, on_exit: Callable[[int], None]) -> threading.Thread:
        def run() -> None:
            pump(self._sock, on_output, tty=self.tty)
            on_exit(self.exit_code())
            _close(self._wrapper)

        thread = threading.Thread(target=run, name=f"mm-exec-{self.exec_id[:8]}", daemon=True)
        thread.start()
        return thread

    def write(self, data: bytes) -> None:
        with self._lock:
            if not self.stdin_closed:
                with contextlib.suppress(OSError):
                    self._sock.sendall(data)

    def close_stdin(self) -> None:
        with self._lock:
            if not self.stdin_closed:
                self.stdin_closed = True
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)  # Docker closes the process's stdin on a half-close

    def exit_code(self) -> int:
        """The exit code once Docker has it (the stream may end a moment before the process is reaped)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                info = self.client.api.exec_inspect(self.exec_id)
            except _DOCKER_ERRORS:
                return 137  # the container is gone: the sandbox ended under the process
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                return 137
            time.sleep(0.005)


class SandboxContainer:
    """A started sandbox container. ``on_output`` gets the entrypoint's chunks; :meth:`wait` its exit code."""

    def __init__(self, client: docker.DockerClient, spec: ContainerSpec, on_output: Output) -> None:
        self.client, self.spec = client, spec
        self.init_file = Path(minimodal._sandbox_init.__file__).resolve()
        self._lock = threading.Lock()
        self._stdin_closed = False
        self.container: Any = None
        self._attach: Any = None
        self._start(on_output)

    def _start(self, on_output: Output) -> None:
        spec = self.spec
        memory = f"{spec.memory or DEFAULT_MEMORY_LIMIT}m"
        cpus = int(min(spec.cpu, self._engine_cpus()) * 1e9) if spec.cpu else None
        try:
            self.container = self._create(
                spec.image,
                ["python", "-u", INIT_PATH, "init", *spec.cmd],
                name=f"mm-{spec.sandbox_id.lower()}-{uuid.uuid4().hex[:4]}",
                stdin_open=True,
                detach=False,  # with stdin_open: StdinOnce, so the worker's socket closing closes the init's stdin
                tty=False,
                auto_remove=True,  # an ended sandbox leaves no container, even when the worker died
                init=True,
                working_dir=spec.workdir,
                mem_limit=memory,
                memswap_limit=memory,
                nano_cpus=cpus,
                pids_limit=DEFAULT_PIDS_LIMIT,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                network_mode="none" if spec.block_network else spec.network,
                # Each port on a free host port of the publish address: Docker's NAT (and its proxy for
                # loopback) brings connections in; the bridge's firewall only refuses what the container opens.
                ports={f"{port}/tcp": (spec.publish_address, None) for port in spec.ports} or None,
                runtime=spec.runtime or None,
                labels=self._labels(),
                # Mounts, not volumes=: the SDK would also declare them as image volumes, which a snapshot
                # (docker commit) would keep, and every container of that image would then mount over them.
                mounts=[
                    docker.types.Mount(INIT_PATH, str(self.init_file), type="bind", read_only=True),
                    *(docker.types.Mount(path, host, type="bind") for path, host in spec.mounts.items()),
                ],
                environment={"PYTHONUNBUFFERED": "1"},
            )
            self._attach = self.client.api.attach_socket(
                self.container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            self._sock = _socket_of(self._attach)
            self.container.start()
        except docker.errors.ImageNotFound as exc:
            self.kill()
            raise SandboxStartError(f"the image {spec.image} does not exist on this worker") from exc
        except docker.errors.APIError as exc:
            self.kill()
            raise SandboxStartError(f"Docker refused to start the sandbox: {exc.explanation or exc}") from exc
        except _DOCKER_ERRORS as exc:
            self.kill()
            raise SandboxStartError(f"cannot reach the Docker engine ({exc}); is dockerd running?") from exc
        self._frame(json.dumps(spec.env).encode())  # the environment, before anything else
        self._pump = threading.Thread(target=pump, args=(self._sock, on_output), name="mm-sandbox-ep", daemon=True)
        self._pump.start()

    def _create(self, image: str, *args: Any, **options: Any) -> Any:
        """Create the container, pulling its image first when this engine lacks it and its name has a registry."""
        try:
            return self.client.containers.create(image, *args, **options)
        except docker.errors.ImageNotFound:
            if registry_of(image) is None:
                raise
        logger.info("pulling %s for sandbox %s", image, self.spec.sandbox_id)
        try:
            pull(self.client, image)
        except PullError as exc:
            raise SandboxStartError(f"the image {image} is not on this worker's engine, and {exc}") from exc
        return self.client.containers.create(image, *args, **options)

    def published(self) -> dict[int, tuple[str, int]]:
        """Each published container port -> the (host address, host port) Docker chose for it."""
        if not self.spec.ports:
            return {}
        self.container.reload()
        found: dict[int, tuple[str, int]] = {}
        for name, bindings in (self.container.attrs.get("NetworkSettings", {}).get("Ports") or {}).items():
            port, _, proto = name.partition("/")
            for binding in bindings or []:
                if proto == "tcp" and int(port) in self.spec.ports and binding.get("HostPort"):
                    found[int(port)] = (binding.get("HostIp") or self.spec.publish_address, int(binding["HostPort"]))
                    break
        missing = set(self.spec.ports) - set(found)
        if missing:
            raise SandboxStartError(f"Docker published no host port for {sorted(missing)}")
        return found

    def _labels(self) -> dict[str, str]:
        own = {f"{LABEL}.{name}": value for name, value in self.spec.labels.items()}
        return {LABEL: "1", f"{LABEL}.sandbox": self.spec.sandbox_id, **own}

    def _engine_cpus(self) -> int:
        try:
            return int(self.client.info().get("NCPU") or 1)
        except _DOCKER_ERRORS:
            return 1

    def _frame(self, data: bytes) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                self._sock.sendall(_LEN.pack(len(data)) + data)

    # ---- the entrypoint ----

    def write_stdin(self, data: bytes) -> None:
        if data and not self._stdin_closed:
            self._frame(data)

    def close_stdin(self) -> None:
        if not self._stdin_closed:
            self._stdin_closed = True
            self._frame(b"")

    def wait(self, timeout: float) -> int | None:
        """The entrypoint's exit code once its output has ended and the container stopped (None: not yet)."""
        self._pump.join(timeout)
        if self._pump.is_alive():
            return None
        try:
            return int(self.container.wait(timeout=10).get("StatusCode", 137))
        except _DOCKER_ERRORS:
            return 137  # removed already (auto_remove) or killed

    # ---- exec ----

    def exec(
        self, cmd: list[str], *, workdir: str | None, env: dict[str, str], timeout: float | None, pty: bool
    ) -> ExecProcess:
        if timeout:
            cmd = ["python", "-u", INIT_PATH, "exec", str(timeout), *cmd]
        created = self.client.api.exec_create(
            self.container.id,
            cmd,
            stdin=True,
            stdout=True,
            stderr=True,
            tty=pty,
            environment=env or None,
            workdir=workdir or self.spec.workdir,
        )
        wrapper = self.client.api.exec_start(created["Id"], socket=True, tty=pty)
        return ExecProcess(self.client, created["Id"], wrapper, pty)

    # ---- the end ----

    def snapshot(self, tag: str, registry: str | None = None) -> str:
        """Commit the file system as ``minimodal/snapshot:<tag>`` (the container pauses meanwhile).

        With a ``registry`` the image is pushed there too and its name is the registry's
        (``<registry>/minimodal/snapshot:<tag>``), which any worker's engine can pull.
        """
        # The image must not carry this sandbox's labels: containers of it are not this sandbox.
        blank = " ".join(f'{name}=""' for name in self._labels() if name != LABEL)
        self.container.commit(
            repository=SNAPSHOT_REPOSITORY, tag=tag, pause=True, changes=[f"LABEL {blank}"] if blank else None
        )
        local = f"{SNAPSHOT_REPOSITORY}:{tag}"
        return push(self.client, local, registry) if registry else local

    def kill(self) -> None:
        """End it now: the container is killed (and so removed); the streams end."""
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # removal already in progress (auto_remove)
                    logger.warning("cannot remove sandbox container %s: %s", self.container.name, exc)
            except _DOCKER_ERRORS:
                logger.warning("cannot remove sandbox container %s", self.container.name, exc_info=True)
        if self._attach is not None:
            _close(self._attach)


def remove_orphans(client: docker.DockerClient, home: str, keep: set[str]) -> int:
    """Remove this stack's sandbox containers whose sandbox is not in ``keep`` (a worker restarted after a crash)."""
    removed = 0
    wanted = [f"{LABEL}=1", f"{LABEL}.home={home}"]
    for container in client.containers.list(all=True, filters={"label": wanted}):
        sandbox = container.labels.get(f"{LABEL}.sandbox")  # "" on containers of a snapshot's image
        if sandbox and sandbox not in keep:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
                removed += 1
    return removed
