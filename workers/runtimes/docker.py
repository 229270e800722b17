"""The Docker runtime: each runner is one long-lived container running the MiniModal runner.

A container starts from an image that has Python and cloudpickle (``minimodal/base:bookworm``, built by
``docker/base/build.sh``). The runner module (``sdk/minimodal/_runner.py``) is bind-mounted read-only into it and
run as a script, with the one module it imports beside it (``sdk/minimodal/_frames.py`` as ``minimodal_frames.py``),
so images need no copy of MiniModal. The worker talks to the runner over the container's attached
stdin and stdout, with the same frames as the process runtime; nothing runs through ``docker exec``,
and a warm container serves input after input.

Limits come from the function's options: ``memory`` (MiB, a hard limit without swap; 2 GiB when not
set), ``cpu`` (a CFS quota) and a pids limit. The container runs as uid 1000 with no capabilities and
no-new-privileges, on a read-only root file system (``/tmp`` is a tmpfs; mounts stay writable), with no
Docker socket, and with ``network_mode=none`` when the function says ``block_network=True``. It is
removed by :meth:`DockerRunner.stop` (not auto-removed, so that an OOM kill can be inspected).

A networked container joins the runners' bridge network (:func:`workers.network.ensure_network`):
traffic between containers is off and iptables rules keep it off the host and private ranges, so no
user reaches another's container, the host's Redis or API, or a metadata address.

The container runtime is the worker's choice (``MINIMODAL_CONTAINER_RUNTIME``): ``runc`` (Linux
namespaces on the host kernel) or ``runsc`` (gVisor: a user-space kernel between the function and the
host's). ``docker/runsc/setup.sh`` registers gVisor twice in the engine: ``runsc`` without any network
(for ``block_network=True``) and ``runsc-net`` for the networked ones. See SECURITY.md.

Example::

    client = docker.from_env()
    runtime = DockerRuntime(client)
    runner = runtime.start(spec)
    outcome = runner.call(cloudpickle.dumps(((2,), {})), call_id="fc-1", idx=0)
    runner.stop()
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import re
import select
import socket
import struct
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.models.containers  # the Container type of annotations
import requests

import minimodal._frames
import minimodal._runner
from minimodal._frames import Frame, Kind, encode_frame, take_frame
from minimodal.exception import InvalidError, ServiceError
from workers.network import DEFAULT_NETWORK, FirewallError, ensure_network

from ..images import PullError, pull, registry_of
from .base import LogSink, Outcome, Runner, RunnerSpec, RunnerStartError, Runtime

logger = logging.getLogger("minimodal.workers.docker")

DEFAULT_IMAGE = "minimodal/base:bookworm"  # built by docker/base/build.sh
DEFAULT_PIDS_LIMIT = 256  # processes and threads per container; stops fork bombs
DEFAULT_MEMORY_LIMIT = 2048  # MiB a container may use when its function sets no `memory`
TMP_SIZE = "512m"  # the writable /tmp (tmpfs); its pages count in the container's memory limit
RUNNER_PATH = "/opt/mm/runner/minimodal_runner.py"  # its own directory: sys.path[0] holds nothing else
FRAMES_PATH = (
    "/opt/mm/runner/minimodal_frames.py"  # sdk/minimodal/_frames.py, beside the runner: what it imports of MiniModal
)
SDK_PATH = "/opt/mm/lib/minimodal"  # this installation's minimodal package, read-only, last on sys.path
RUNNER_UID = "1000:1000"  # the mm user of the base image
LABEL = "minimodal"  # every container we start carries minimodal=1
CONTAINER_RUNTIMES = ("runc", "runsc")  # what MINIMODAL_CONTAINER_RUNTIME may name
# The engine's runtime for (container runtime, block_network): docker/runsc/setup.sh registers both gVisor ones.
_ENGINE_RUNTIMES = {
    ("runc", False): "runc",
    ("runc", True): "runc",
    ("runsc", False): "runsc-net",
    ("runsc", True): "runsc",
}

_MUX = struct.Struct(">BxxxL")  # a Docker attach chunk without a TTY: stream (1 stdout, 2 stderr), length
_STDOUT, _STDERR = 1, 2
_STDERR_TAIL = 2000  # characters of the container's stderr kept for error messages

_DOCKER_ERRORS = (docker.errors.DockerException, requests.RequestException)


class _AttachStream:
    """The container's stdout and stderr, demultiplexed from one attach socket, read with a deadline."""

    def __init__(self, sock: socket.socket, on_stderr: Any) -> None:
        self.sock = sock
        self.eof = False
        self.stdout = bytearray()
        self._raw = bytearray()
        self._on_stderr = on_stderr
        self._poll = select.poll()  # not select.select: a busy worker may hold fds above 1024
        self._poll.register(sock, select.POLLIN | select.POLLPRI)

    def _receive(self, wait: float) -> None:
        """Take in what arrives within ``wait`` seconds (0: only what is there already)."""
        if not self._poll.poll(max(wait, 0) * 1000):
            return
        chunk = self.sock.recv(262144)
        if not chunk:
            self.eof = True
            return
        self._raw += chunk
        done = 0
        with memoryview(self._raw) as raw:  # slices of a view copy once, into their destination
            while len(raw) - done >= _MUX.size:
                stream, size = _MUX.unpack_from(raw, done)
                start, end = done + _MUX.size, done + _MUX.size + size
                if len(raw) < end:
                    break
                if stream == _STDOUT:
                    self.stdout += raw[start:end]
                elif stream == _STDERR:
                    self._on_stderr(bytes(raw[start:end]))
                done = end
        del self._raw[:done]

    def drain(self) -> None:
        """Take in whatever is waiting, without blocking; sets ``eof`` if the container's streams ended."""
        while not self.eof and self._poll.poll(0):
            self._receive(0)

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.stdout) < n:
            if self.eof:
                return False
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            self._receive(wait)
        return True

    def read_frame(self, deadline: float) -> Frame | None:
        """The next runner frame; None when the container's stdout ended first."""
        return take_frame(self.stdout, lambda n: self._fill(n, deadline))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code > 128:  # docker-init (tini) reports a child killed by signal N as 128 + N
        return f"was killed by signal {code - 128}"
    return f"exited with code {code}"


def container_name(spec: RunnerSpec) -> str:
    """``mm-u<user>-<function id>-<random>`` for a function's container, ``mm-<random>`` for a blank one.

    Docker labels are fixed at creation, so a container started blank carries no owner labels; its name
    is renamed to this when it is bound, and ``docker ps --filter name=-fu-...-`` finds a function's
    containers either way (``minimodal container list`` asks the worker, which knows every owner).
    """
    owner = "-".join(
        _NAME_UNSAFE.sub("_", value)
        for value in (f"u{spec.labels['user']}" if spec.labels.get("user") else "", spec.labels.get("function_id", ""))
        if value
    )
    return f"mm-{owner}-{uuid.uuid4().hex[:12]}" if owner else f"mm-{uuid.uuid4().hex[:12]}"


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")  # what a Docker container name may not hold


def _labels(spec: RunnerSpec, runtime_id: str) -> dict[str, str]:
    labels = {f"{LABEL}.{name}": value for name, value in spec.labels.items()}
    labels.update({LABEL: "1", f"{LABEL}.runtime": runtime_id, f"{LABEL}.key": spec.key})
    return labels


class DockerRunner(Runner):
    """One container running ``minimodal_runner.py`` with the function loaded."""

    def __init__(self, runtime: DockerRuntime, spec: RunnerSpec, image: str, *, blank: bool = False) -> None:
        self.spec = spec
        self.image = image
        self._runtime = runtime
        self._client = runtime.client
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._on_log: LogSink | None = None
        self._stderr_decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stderr_tail = ""
        self._sock: socket.socket | None = None
        self._attach: Any = None  # the docker SDK's socket wrapper; holds the HTTP response open
        self._stream: _AttachStream | None = None
        self.container: docker.models.containers.Container | None = None
        self._blank = blank  # started with no function: renamed after its owner when it loads one
        try:
            self._launch(runtime, spec, image)
            if not blank:
                self._load(spec)
        except BaseException:
            self.stop()
            raise

    def _create(self, image: str, **options: Any) -> docker.models.containers.Container:
        """Create the container, pulling its image first when this engine lacks it and a registry has it."""
        try:
            return self._client.containers.create(image, **options)
        except docker.errors.ImageNotFound:
            pass
        registry = registry_of(image)
        if registry is None:
            raise RunnerStartError(
                f"the image {image} is not on this worker's Docker engine, and its name has no registry to pull "
                "it from: it was built on another machine's engine (set MINIMODAL_REGISTRY, e.g. 127.0.0.1:5000, "
                "on the control plane and every worker, then deploy again: images are pushed when built and "
                "pulled where they run), or it is the base image (build it with `make docker-base`)",
                infrastructure=False,
                error_type="ImageNotFoundError",
            )
        logger.info("pulling %s from the registry %s", image, registry)
        try:
            pull(self._client, image)
        except PullError as exc:
            if exc.missing:  # the registry answers and has no such image: trying elsewhere will not help
                raise RunnerStartError(
                    f"the image {image} is not on this worker's Docker engine, and {exc}: the registry lost it "
                    "(restore its storage from a backup, docs/DEPLOY.md)",
                    infrastructure=False,
                    error_type="ImageNotFoundError",
                ) from exc
            raise RunnerStartError(str(exc)) from exc
        return self._client.containers.create(image, **options)

    def _launch(self, runtime: DockerRuntime, spec: RunnerSpec, image: str) -> None:
        """Create, attach and start the container; its runner then waits for a function (``S``, ``F``)."""
        memory = f"{spec.memory or runtime.default_memory}m"
        try:
            network = "none" if spec.block_network else runtime.network_name()
            self.container = self._create(
                image,
                command=["python", "-u", RUNNER_PATH],
                name=container_name(spec),
                stdin_open=True,
                tty=False,
                init=True,  # docker-init reaps what user code forks; the runner is not pid 1
                user=RUNNER_UID,
                mem_limit=memory,
                memswap_limit=memory,  # equal to mem_limit: no swap on top of the limit
                nano_cpus=runtime.nano_cpus(spec.cpu),
                pids_limit=runtime.pids_limit,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,  # the image's files cannot be changed; /tmp and mounts are the writable places
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={TMP_SIZE}"},  # counted in the memory limit
                network_mode=network,  # else the runners' bridge: no other container, host or private range
                runtime=runtime.engine_runtime(spec.block_network),
                labels=_labels(spec, runtime.id),
                volumes={
                    str(runtime.runner_file): {"bind": RUNNER_PATH, "mode": "ro"},
                    str(runtime.frames_file): {"bind": FRAMES_PATH, "mode": "ro"},
                    # The SDK, so that code in the container can use minimodal.Dict, Queue, ... (their
                    # requests go through the runner's stdio, since the container cannot reach the API).
                    str(runtime.sdk_dir): {"bind": SDK_PATH, "mode": "ro"},
                    **{host: {"bind": path, "mode": "rw"} for path, host in spec.mounts.items()},
                },
                # Not PYTHONPATH: that would hide the image's own (ENV PYTHONPATH of add_local_python_source).
                environment={"PYTHONUNBUFFERED": "1", "MINIMODAL_SDK_PATH": SDK_PATH.rsplit("/", 1)[0]},
            )
            # Attach before start: nothing the runner writes can be missed.
            self._attach = self._client.api.attach_socket(
                self.container.id,  # type: ignore[arg-type]  # a created container has its id
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
            )
            self._sock = getattr(self._attach, "_sock", self._attach)
            self._stream = _AttachStream(self._sock, self._take_stderr)
            self.container.start()
        except docker.errors.NotFound as exc:  # the network was removed meanwhile (`minimodal down` elsewhere)
            runtime.forget_network()
            raise RunnerStartError(f"Docker refused to start a runner container: {exc.explanation or exc}") from exc
        except docker.errors.APIError as exc:
            raise RunnerStartError(f"Docker refused to start a runner container: {exc.explanation or exc}") from exc
        except _DOCKER_ERRORS as exc:
            raise RunnerStartError(f"cannot reach the Docker engine ({exc}); is dockerd running?") from exc

    def load(self, spec: RunnerSpec) -> None:
        try:
            self._load(spec)
        except BaseException:
            self.stop()
            raise
        if self._blank:
            self._blank = False
            # Off the call's path: the name is for operators (`docker ps`), nothing here depends on it.
            threading.Thread(target=self._rename, args=(container_name(spec),), name="mm-rename", daemon=True).start()

    def _rename(self, name: str) -> None:
        container = self.container
        if container is None or self._stopped:
            return
        try:
            container.rename(name)
        except _DOCKER_ERRORS as exc:  # removed meanwhile, or the engine went away: the name was cosmetic
            logger.debug("could not rename runner container %s to %s: %s", container.short_id, name, exc)

    def _load(self, spec: RunnerSpec) -> None:
        """Send the function and wait for the runner's ``R``: the container is bound to ``spec`` now."""
        self.spec = spec
        runtime, image, stream = self._runtime, self.image, self._stream
        assert stream is not None
        deadline = time.monotonic() + runtime.startup_timeout
        try:
            if spec.source:
                self.send_frame(Kind.SOURCE, {}, spec.source, deadline)
            self.send_frame(Kind.FUNCTION, spec.load_header(), spec.code, deadline)
            frame = stream.read_frame(deadline)
        except TimeoutError as exc:
            raise RunnerStartError(
                f"the runner container did not start within {runtime.startup_timeout:g} s{self._stderr_note()}"
            ) from exc
        except OSError as exc:
            frame = None
            logger.debug("the attach socket failed while starting: %s", exc)
        if frame is None:
            code, _ = self._exit_state()
            raise RunnerStartError(
                f"the runner container {_describe_exit(code)} before loading the function{self._stderr_note()}"
            )
        kind, header, _ = frame
        if kind != Kind.READY:
            raise RunnerStartError(
                f"the function could not be loaded in the runner: {header.get('repr', 'unknown error')}",
                header.get("traceback"),
                infrastructure=False,
            )
        python = f"{sys.version_info[0]}.{sys.version_info[1]}"
        # Imported by name, a function runs on any Python; pickled by value, only on the worker's own.
        if not spec.load.get("import") and header.get("python", python) != python:
            raise RunnerStartError(
                f"the image {image} has Python {header['python']} but this worker runs Python {python}; "
                "cloudpickled functions only load in the same major.minor version",
                infrastructure=False,
            )

    # --- streams ------------------------------------------------------------------------------------

    def _take_stderr(self, data: bytes) -> None:
        text = self._stderr_decoder.decode(data)
        if not text:
            return
        self._stderr_tail = (self._stderr_tail + text)[-_STDERR_TAIL:]
        if self._on_log is not None:
            self._on_log("stderr", text)
        else:
            logger.debug("runner %s stderr: %s", self.spec.key[:16], text.rstrip())

    def _stderr_note(self) -> str:
        tail = self._stderr_tail.strip()
        return f"; its stderr ends with:\n{tail}" if tail else ""

    def send_frame(self, kind: Kind, header: dict[str, Any], body: bytes, deadline: float) -> None:
        frame = encode_frame(kind, header, body)
        sock = self._sock
        if sock is None:  # stopped meanwhile
            raise BrokenPipeError
        wait = deadline - time.monotonic()
        if wait <= 0:
            raise TimeoutError
        sock.settimeout(wait)  # a runner that stops reading its stdin must not block us forever
        try:
            sock.sendall(frame)
        finally:
            sock.settimeout(None)

    # --- the Runner interface -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        stream = self._stream
        if self._stopped or stream is None:
            return False
        try:
            stream.drain()  # a container that died while idle has closed its streams
        except (OSError, ValueError):
            return False
        return not stream.eof

    def begin_input(self, on_log: LogSink | None) -> bool:
        stream = self._stream
        if self._stopped or stream is None:
            return False
        stream.drain()  # stderr that came after the previous input belongs to no input: it is logged here
        if stream.eof:
            return False
        self._on_log = on_log
        return True

    def end_input(self) -> None:
        # Docker does not order stderr against stdout: take the stderr that is here already.
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.drain()

    def finish_input(self) -> None:
        self._on_log = None

    def time_out(self) -> str:
        self.stop()
        return "its container was stopped"

    def read_frame(self, deadline: float) -> Frame | None:
        stream = self._stream
        if self._stopped or stream is None:
            return None
        return stream.read_frame(deadline)

    def lost(self, started: float, idx: int) -> Outcome:
        return self._lost(started, idx)

    def _exit_state(self, wait: float = 5.0) -> tuple[int | None, bool]:
        """The container's exit code (None if it is still running) and whether the kernel OOM-killed it."""
        if self.container is None:
            return None, False
        try:
            code = self.container.wait(timeout=wait).get("StatusCode")
        except _DOCKER_ERRORS:
            return None, False
        oom = False
        # Docker records the OOM event apart from the exit; give it a moment when the exit looks like one.
        for _ in range(10):
            try:
                self.container.reload()
            except _DOCKER_ERRORS:
                break
            oom = bool(self.container.attrs.get("State", {}).get("OOMKilled"))
            if oom or code != 137:
                break
            time.sleep(0.05)
        return code, oom

    def _lost(self, started: float, idx: int) -> Outcome:
        self._on_log = None
        code, oom = self._exit_state()
        fresh = "; the next call starts a fresh container"
        if oom and self.spec.memory:
            message = (
                f"the function's container ran out of memory while running input {idx}: it was killed at its "
                f"memory limit of {self.spec.memory} MiB; give the function more memory (memory=...){fresh}"
            )
        elif oom:
            message = (
                f"the function's container ran out of memory while running input {idx} (no memory limit set){fresh}"
            )
        else:
            message = f"the function's container {_describe_exit(code)} while running input {idx}{fresh}"
        self.stop()
        return Outcome(
            ok=False,
            error_type="RemoteError",
            message=message + self._stderr_note(),
            duration=time.monotonic() - started,
            runner_lost=True,
        )

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except _DOCKER_ERRORS:
                logger.warning("could not remove runner container %s", self.container.name, exc_info=True)
        self._close_socket()

    def _close_socket(self) -> None:
        sock, attach = self._sock, self._attach
        self._sock = self._attach = None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # The SDK keeps the HTTP response on the wrapper; close it before the socket it reads from.
        response = getattr(attach, "_response", None)
        for closeable in (response, attach, sock):
            if closeable is not None:
                try:
                    closeable.close()
                except (OSError, ValueError):
                    pass


class DockerRuntime(Runtime):
    """Runners are containers on the worker's Docker engine.

    Args:
        client: a Docker client (``docker.from_env()``); the caller owns and closes it.
        image: the image runners start from; it needs Python of the worker's major.minor and cloudpickle.
        startup_timeout: seconds a container may take to start and load the function.
        pids_limit: processes and threads per container.
        runner_file: the runner script to bind-mount; by default this installation's ``minimodal/_runner.py``.
            This installation's ``minimodal/_frames.py`` is mounted beside it (the runner imports it).
            It must be a path on the Docker host, so the worker and the engine share a filesystem.
        container_runtime: ``runc`` or ``runsc`` (gVisor, registered by ``docker/runsc/setup.sh``).
        network: the bridge network of networked runners, made by :func:`workers.network.ensure_network`.

    Raises:
        InvalidError: for an unknown ``container_runtime``, or ``runsc`` on an engine without it.
    """

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        image: str = DEFAULT_IMAGE,
        startup_timeout: float = 60.0,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        runner_file: str | Path | None = None,
        default_memory: int = DEFAULT_MEMORY_LIMIT,
        container_runtime: str = "runc",
        network: str = DEFAULT_NETWORK,
    ) -> None:
        if container_runtime not in CONTAINER_RUNTIMES:
            raise InvalidError(f"container runtime {container_runtime!r}: give one of {', '.join(CONTAINER_RUNTIMES)}")
        self.client = client
        self.container_runtime = container_runtime
        self.network = network
        self._network_ready = False
        if container_runtime == "runsc":
            try:
                registered = set(client.info().get("Runtimes") or {})
            except _DOCKER_ERRORS as exc:
                raise ServiceError(f"cannot reach the Docker engine ({exc}); is dockerd running?") from exc
            if not {"runsc", "runsc-net"} <= registered:
                raise InvalidError(
                    "MINIMODAL_CONTAINER_RUNTIME=runsc, but the Docker engine has no runsc and runsc-net runtimes "
                    f"(it has {', '.join(sorted(registered)) or 'none'}); run docker/runsc/setup.sh (make docker-base)"
                )
        self.default_memory = default_memory
        self.image = image
        self.startup_timeout = startup_timeout
        self.pids_limit = pids_limit
        self.runner_file = Path(runner_file or minimodal._runner.__file__).resolve()
        self.frames_file = Path(minimodal._frames.__file__).resolve()
        self.sdk_dir = Path(minimodal._runner.__file__).resolve().parent
        self.id = uuid.uuid4().hex[:12]  # labels this runtime's containers, for shutdown()
        self._engine_cpus: int | None = None

    def nano_cpus(self, cpu: float | None) -> int | None:
        """The CFS quota for ``cpu`` cores, capped at the engine's core count (Docker refuses more)."""
        if not cpu:
            return None
        if self._engine_cpus is None:
            try:
                self._engine_cpus = int(self.client.info().get("NCPU") or 1)
            except _DOCKER_ERRORS as exc:
                raise RunnerStartError(f"cannot reach the Docker engine ({exc}); is dockerd running?") from exc
        return int(min(cpu, self._engine_cpus) * 1e9)

    def engine_runtime(self, block_network: bool) -> str:
        """The engine's runtime name for a container of this runtime (gVisor has one per network mode)."""
        return _ENGINE_RUNTIMES[self.container_runtime, bool(block_network)]

    def network_name(self) -> str:
        """The runners' network, created with its firewall on first use (and again if it was removed)."""
        if not self._network_ready:
            try:
                ensure_network(self.client, self.network)
            except FirewallError as exc:
                raise RunnerStartError(f"cannot isolate the runner's network: {exc}") from exc
            except _DOCKER_ERRORS as exc:
                raise RunnerStartError(f"cannot create the runners' network {self.network!r}: {exc}") from exc
            self._network_ready = True
        return self.network

    def forget_network(self) -> None:
        self._network_ready = False

    def blank_key(self, spec: RunnerSpec) -> str | None:
        # What the container is created with; mounts are per function (volumes), so those start bound.
        if spec.mounts:
            return None
        return f"{spec.image or self.image}|cpu={spec.cpu}|memory={spec.memory}|none={bool(spec.block_network)}"

    def start_blank(self, template: RunnerSpec) -> Runner:
        return DockerRunner(self, template, template.image or self.image, blank=True)

    def start(self, spec: RunnerSpec) -> Runner:
        return DockerRunner(self, spec, spec.image or self.image)

    def shutdown(self) -> None:
        """Remove what is left of this runtime's containers (the pool stops runners first)."""
        remove_all_containers(self.client, {f"{LABEL}.runtime": self.id})


def remove_all_containers(client: docker.DockerClient, labels: dict[str, str] | None = None) -> int:
    """Force-remove every MiniModal container (label ``minimodal=1``), or those with all ``labels`` too.

    Used at worker shutdown and by ``minimodal down``. Returns how many were removed.
    """
    wanted = [f"{LABEL}=1"] + [f"{name}={value}" for name, value in (labels or {}).items()]
    removed = 0
    for container in client.containers.list(all=True, filters={"label": wanted}):
        try:
            container.remove(force=True)
            removed += 1
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # gone, or being removed, by its runner meanwhile
                raise
    return removed
