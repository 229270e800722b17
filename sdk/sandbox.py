"""``Sandbox``: a container created at run time, in which you run commands and read their output (Modal's API).

A sandbox runs on a Docker worker, from an image built as functions' images are, with their volumes and
secrets; it counts against your quota and fair share while it lives. Its output streams as it is
written: ``for line in p.stdout`` gets the first line while the command still runs.

Example::

    import minimodal

    sb = minimodal.Sandbox.create(image=minimodal.Image.debian_slim(), timeout=600)
    p = sb.exec("bash", "-c", "for i in 1 2 3; do echo $i; sleep 1; done")
    for line in p.stdout:
        print(line, end="")
    assert p.wait() == 0
    with sb.open("/tmp/notes.txt", "w") as f:
        f.write("hello")
    print(sb.ls("/tmp"))
    sb.terminate()
"""

from __future__ import annotations

import builtins
import codecs
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ._aio import aio_method
from ._client import Client
from .exception import (
    InvalidError,
    SandboxFilesystemError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)
from .image import Image
from .protocol import SANDBOX_ENTRYPOINT, b64, parse_gpu, unb64
from .secret import Secret, check_secrets
from .volume import Volume

POLL_SECONDS = 25  # how long one long-poll of output or state blocks on the server
INIT = "/opt/mm/sandbox/init.py"  # the helper the worker bind-mounts in every sandbox (sdk/_sandbox_init.py)
_TERMINAL = ("finished", "terminated", "timeout", "failed")


class _AioClassMethod:
    """A classmethod with an ``.aio`` form, as Modal's ``Sandbox.create.aio(...)``."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def __get__(self, obj: Any, owner: type) -> Any:
        fn = self._fn

        def bound(*args: Any, **kwargs: Any) -> Any:
            return fn(owner, *args, **kwargs)

        async def aio(*args: Any, **kwargs: Any) -> Any:
            import asyncio

            return await asyncio.to_thread(fn, owner, *args, **kwargs)

        bound.aio = aio  # type: ignore[attr-defined]
        bound.__doc__ = fn.__doc__
        return bound


@dataclass(frozen=True)
class Tunnel:
    """A port of a running sandbox, reachable from outside (``Sandbox.tunnels()``), as Modal's.

    ``url`` (and ``tls_socket``) reach the port through the API: HTTP relayed by the server you talk to,
    ``https`` when it is served over TLS, for your own token only (send it as a bearer token, as every
    request to the API). A port given in ``unencrypted_ports=`` also has ``tcp_socket``: the worker's
    host and the host port Docker published it on, for any TCP client.
    """

    host: str
    port: int
    unencrypted_host: str | None = None
    unencrypted_port: int | None = None
    path: str = ""  # where the API serves this port: /v1/sandboxes/{id}/tunnels/{port}
    scheme: str = "https"

    @property
    def url(self) -> str:
        """The URL of the forwarded port (a path of the API's URL)."""
        default = 443 if self.scheme == "https" else 80
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}"

    @property
    def tls_socket(self) -> tuple[str, int]:
        """(host, port) of the API that serves the tunnel (TLS when it is served over https)."""
        return self.host, self.port

    @property
    def tcp_socket(self) -> tuple[str, int]:
        """(host, port) to connect any TCP client to; only for ``unencrypted_ports``."""
        if self.unencrypted_host is None or self.unencrypted_port is None:
            raise InvalidError(
                "this tunnel has no unencrypted TCP socket: give the port in unencrypted_ports= to get one"
            )
        return self.unencrypted_host, self.unencrypted_port


class StreamReader:
    """A process's stdout or stderr: iterate it line by line as lines arrive, or ``read()`` it to the end."""

    def __init__(self, client: Client, sandbox_id: str, process_id: str, fd: int, text: bool = True) -> None:
        self._client, self._sandbox_id, self._process_id, self._fd = client, sandbox_id, process_id, fd
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._cursor = "0-0"
        self._buffer: Any = "" if text else b""
        self.eof = False

    def _fetch(self) -> None:
        """One long-poll for what came after the cursor (the server's cursor survives a reconnect)."""
        reply = self._client.request(
            "GET",
            f"/v1/sandboxes/{self._sandbox_id}/processes/{self._process_id}/output",
            params={"fd": self._fd, "cursor": self._cursor, "timeout": POLL_SECONDS},
            timeout=POLL_SECONDS + 30,
            reconnect=True,
        )
        self._cursor = reply["cursor"]
        data = b"".join(unb64(c) for c in reply["chunks"])
        if self._text:
            self._buffer += self._decoder.decode(data, final=reply["eof"])
        else:
            self._buffer += data
        self.eof = reply["eof"]

    def _lines(self) -> Iterator[Any]:
        newline = "\n" if self._text else b"\n"
        while True:
            at = self._buffer.find(newline)
            if at >= 0:
                line, self._buffer = self._buffer[: at + 1], self._buffer[at + 1 :]
                yield line
                continue
            if self.eof:
                if self._buffer:
                    line, self._buffer = self._buffer, self._buffer[:0]
                    yield line
                return
            self._fetch()

    def __iter__(self) -> Iterator[Any]:
        return self._lines()

    async def __aiter__(self) -> AsyncIterator[Any]:
        import asyncio

        lines = self._lines()
        done = object()
        while (line := await asyncio.to_thread(next, lines, done)) is not done:
            yield line

    @aio_method
    def read(self) -> Any:
        """Everything the stream holds until its end (blocks until the process ends)."""
        while not self.eof:
            self._fetch()
        out, self._buffer = self._buffer, self._buffer[:0]
        return out


class StreamWriter:
    """A process's stdin: ``write()`` buffers, ``drain()`` sends, ``write_eof()`` closes it after what was written."""

    def __init__(self, client: Client, sandbox_id: str, process_id: str) -> None:
        self._client, self._sandbox_id, self._process_id = client, sandbox_id, process_id
        self._pending = bytearray()
        self._eof = False
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        if self._eof:
            raise InvalidError("stdin was closed with write_eof()")
        self._pending += data.encode() if isinstance(data, str) else bytes(data)

    def write_eof(self) -> None:
        """Close stdin once what was written is sent (at the next ``drain()``)."""
        self._eof = True

    @aio_method
    def drain(self) -> None:
        """Send what was written (and the end of stdin, after ``write_eof()``)."""
        if not self._pending and (not self._eof or self._closed):
            return
        body: dict[str, Any] = {"data": b64(bytes(self._pending))}
        if self._eof:
            body["eof"] = True
        self._client.request("POST", f"/v1/sandboxes/{self._sandbox_id}/processes/{self._process_id}/stdin", json=body)
        self._pending.clear()
        self._closed = self._eof


class ContainerProcess:
    """A process running in a sandbox (``Sandbox.exec``): its streams and its exit code."""

    def __init__(self, client: Client, sandbox_id: str, process_id: str, text: bool = True) -> None:
        self._client, self._sandbox_id, self.process_id = client, sandbox_id, process_id
        self._returncode: int | None = None
        self.stdout = StreamReader(client, sandbox_id, process_id, 1, text)
        self.stderr = StreamReader(client, sandbox_id, process_id, 2, text)
        self.stdin = StreamWriter(client, sandbox_id, process_id)

    def __repr__(self) -> str:
        return f"ContainerProcess({self.process_id!r} in {self._sandbox_id})"

    def _state(self, wait: float) -> int | None:
        reply = self._client.request(
            "GET",
            f"/v1/sandboxes/{self._sandbox_id}/processes/{self.process_id}",
            params={"wait": wait},
            timeout=wait + 30,
            reconnect=True,
        )
        if reply["done"]:
            self._returncode = reply["returncode"]
        return self._returncode

    @property
    def returncode(self) -> int | None:
        """The exit code once the process ended (``None`` before: use ``poll()`` or ``wait()``)."""
        return self._returncode

    def poll(self) -> int | None:
        """The exit code if the process ended, else ``None`` (does not block)."""
        return self._returncode if self._returncode is not None else self._state(0)

    @aio_method
    def wait(self) -> int:
        """Block until the process ends; return its exit code."""
        while self._returncode is None:
            self._state(POLL_SECONDS)
        return self._returncode


class _FileIO:
    """A file in a sandbox (``Sandbox.open``): read whole at open, or written back at ``flush``/``close``."""

    def __init__(self, sandbox: Sandbox, path: str, mode: str) -> None:
        base = mode.replace("b", "").replace("t", "")
        if base not in ("r", "w", "a", "x", "r+", "w+", "a+"):
            raise InvalidError(f"open mode {mode!r}: give r, w, a, x (optionally with b or +)")
        self._sandbox, self.path, self.mode = sandbox, path, mode
        self._binary = "b" in mode
        self._readable = base.startswith("r") or "+" in base
        self._writable = base[0] in "wax" or "+" in base
        self._data = bytearray()
        self._pos = 0
        self._dirty = False
        self._append = base.startswith("a")
        self.closed = False
        if base.startswith("x") and self._sandbox._file_op("exists", path) == "1":
            raise SandboxFilesystemError(f"already exists: {path}")
        if base.startswith("r") or (self._append and "+" in base):
            self._data = bytearray(self._sandbox._file_read(path))
            if self._append:
                self._pos = len(self._data)
        if base[0] in "wxa":
            self._dirty = True  # the file is created (or emptied) even if nothing is written
        self._append_from = len(self._data) if self._append else 0  # what a flush of "a" sends starts here

    def _check(self, writing: bool) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if writing and not self._writable:
            raise SandboxFilesystemError(f"{self.path} is open for reading ({self.mode!r})")
        if not writing and not self._readable:
            raise SandboxFilesystemError(f"{self.path} is open for writing ({self.mode!r})")

    def _out(self, data: bytes) -> Any:
        return data if self._binary else data.decode("utf-8")

    def read(self, n: int | None = None) -> Any:
        self._check(False)
        end = len(self._data) if n is None or n < 0 else min(len(self._data), self._pos + n)
        out = bytes(self._data[self._pos : end])
        self._pos = end
        return self._out(out)

    def readline(self) -> Any:
        self._check(False)
        at = self._data.find(b"\n", self._pos)
        end = len(self._data) if at < 0 else at + 1
        out = bytes(self._data[self._pos : end])
        self._pos = end
        return self._out(out)

    def readlines(self) -> list[Any]:
        lines = []
        while line := self.readline():
            lines.append(line)
        return lines

    def write(self, data: bytes | str) -> int:
        self._check(True)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if self._append:
            self._pos = len(self._data)
        self._data[self._pos : self._pos + len(raw)] = raw
        self._pos += len(raw)
        self._dirty = True
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        base = {0: 0, 1: self._pos, 2: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if self._dirty and not self.closed:
            if self._append:
                self._sandbox._file_write(self.path, bytes(self._data[self._append_from :]), append=True)
                self._append_from = len(self._data)
            else:
                self._sandbox._file_write(self.path, bytes(self._data), append=False)
            self._dirty = False

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> _FileIO:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _secret_specs(where: str, secrets: Any, env: dict[str, str] | None) -> list[dict[str, Any]]:
    specs = [s._spec() for s in check_secrets(where, list(secrets or []))]
    if env:
        values: dict[str, str | None] = dict(env)
        specs.append(Secret.from_dict(values)._spec())
    return specs


class Sandbox:
    """A running container for arbitrary commands. Make one with :meth:`Sandbox.create`."""

    def __init__(self, sandbox_id: str, client: Client | None = None, info: dict[str, Any] | None = None) -> None:
        self.object_id = sandbox_id
        self._client = client or Client.from_config()
        self._info: dict[str, Any] = info or {}
        self.stdout = StreamReader(self._client, sandbox_id, SANDBOX_ENTRYPOINT, 1)
        self.stderr = StreamReader(self._client, sandbox_id, SANDBOX_ENTRYPOINT, 2)
        self.stdin = StreamWriter(self._client, sandbox_id, SANDBOX_ENTRYPOINT)

    def __repr__(self) -> str:
        return f"Sandbox({self.object_id!r})"

    # ---- making and finding ----

    @_AioClassMethod
    def create(
        cls: type[Sandbox],
        *cmd: str,
        app: Any = None,
        image: Image | None = None,
        secrets: Sequence[Secret] = (),
        volumes: dict[str, Volume] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        cpu: float | None = None,
        memory: int | None = None,
        gpu: str | None = None,
        block_network: bool = False,
        encrypted_ports: Sequence[int] = (),
        unencrypted_ports: Sequence[int] = (),
        env: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        **unsupported: Any,
    ) -> Sandbox:
        """Start a sandbox running ``cmd`` (none: it waits for ``exec``); return once it runs.

        ``encrypted_ports`` are reached at their tunnel's ``url`` through the API, ``unencrypted_ports``
        also at a raw TCP socket on the worker's host (see :meth:`tunnels`).

        Raises:
            InvalidError: bad options (ports with ``block_network=True``), or no worker has a Docker engine.
            SandboxTerminatedError: it could not start (the message says why).
        """
        if unsupported:
            raise InvalidError(f"Sandbox.create: {sorted(unsupported)} are not supported by MiniModal yet")
        if not all(isinstance(c, str) for c in cmd):
            raise InvalidError("Sandbox.create(*cmd): every part of the command is a string")
        if image is not None and not isinstance(image, Image):
            raise InvalidError(f"image={image!r}: give a minimodal.Image")
        if volumes and not all(isinstance(v, Volume) and p.startswith("/") for p, v in volumes.items()):
            raise InvalidError('volumes= takes {"/absolute/path": minimodal.Volume, ...}')
        if gpu is not None:
            try:
                parse_gpu(gpu)
            except ValueError as exc:
                raise InvalidError(f"gpu={gpu!r}: {exc}") from None
        ports = [*encrypted_ports, *unencrypted_ports]
        if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports):
            raise InvalidError("encrypted_ports= and unencrypted_ports= take TCP port numbers (1 to 65535)")
        if ports and block_network:
            raise InvalidError(
                "block_network=True takes no encrypted_ports or unencrypted_ports: nothing could reach them"
            )
        from .app import _ensure_image

        client = Client.from_config()
        chosen = image or (getattr(app, "image", None) if app is not None else None) or Image.debian_slim()
        body: dict[str, Any] = {
            "cmd": list(cmd),
            "image": _ensure_image(client, chosen),
            "secrets": _secret_specs("Sandbox.create", secrets, env),
            "volumes": {path: vol.object_id for path, vol in (volumes or {}).items()},
            "workdir": workdir,
            "timeout": timeout,
            "idle_timeout": idle_timeout,
            "cpu": cpu,
            "memory": memory,
            "gpu": gpu,
            "block_network": block_network,
            "encrypted_ports": list(encrypted_ports),
            "unencrypted_ports": list(unencrypted_ports),
            "tags": tags or {},
        }
        app_id = getattr(app, "app_id", None) if app is not None else None
        if app is not None and app_id is None:
            raise InvalidError("Sandbox.create(app=...): the app is not running; use it inside `with app.run():`")
        if app_id:
            body["app_id"] = app_id
        reply = client.request("POST", "/v1/sandboxes", json=body)
        sandbox = cls(reply["sandbox_id"], client)
        while True:
            info = sandbox._refresh(POLL_SECONDS, until="running")
            if info["state"] != "queued":
                break
        if info["state"] == "failed":
            raise SandboxTerminatedError(f"sandbox {sandbox.object_id} could not start: {info.get('error')}")
        return sandbox

    @_AioClassMethod
    def from_id(cls: type[Sandbox], sandbox_id: str) -> Sandbox:
        """The sandbox ``sandbox_id`` (yours); ``NotFoundError`` for anything else."""
        sandbox = cls(sandbox_id)
        sandbox._refresh(0)
        return sandbox

    @_AioClassMethod
    def list(cls: type[Sandbox], *, app_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Sandbox]:
        """Your running sandboxes, newest first (of one app, and with all of ``tags``)."""
        client = Client.from_config()
        params: dict[str, Any] = {"state": "running", "tag": [f"{k}={v}" for k, v in (tags or {}).items()]}
        if app_id:
            params["app_id"] = app_id
        reply = client.request("GET", "/v1/sandboxes", params=params)
        return iter([cls(info["sandbox_id"], client, info) for info in reply["sandboxes"]])

    @aio_method
    def set_tags(self, tags: dict[str, str]) -> None:
        """Replace the sandbox's tags (``Sandbox.list(tags=...)`` finds it by them)."""
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise InvalidError("set_tags takes a dict of strings")
        self._client.request("POST", f"/v1/sandboxes/{self.object_id}/tags", json={"tags": tags})

    def _refresh(self, wait: float, until: str = "ended") -> dict[str, Any]:
        self._info = self._client.request(
            "GET",
            f"/v1/sandboxes/{self.object_id}",
            params={"wait": wait, "until": until},
            timeout=wait + 30,
            reconnect=True,
        )
        return self._info

    # ---- state ----

    @property
    def returncode(self) -> int | None:
        """The entrypoint's exit code once the sandbox ended (124 after a timeout, 137 when terminated)."""
        if self._info.get("state") in _TERMINAL:
            return self._info.get("returncode")
        return None

    def poll(self) -> int | None:
        """The returncode if the sandbox ended, else ``None`` (does not block)."""
        if self._info.get("state") not in _TERMINAL:
            self._refresh(0)
        return self.returncode

    @aio_method
    def wait(self, raise_on_termination: bool = True) -> None:
        """Block until the sandbox ends.

        Raises:
            SandboxTimeoutError: it ran past its ``timeout`` or ``idle_timeout`` (with ``raise_on_termination``).
            SandboxTerminatedError: it was terminated, or its worker was lost (with ``raise_on_termination``).
        """
        while self._info.get("state") not in _TERMINAL:
            self._refresh(POLL_SECONDS)
        if raise_on_termination:
            state, why = self._info["state"], self._info.get("error") or ""
            if state == "timeout":
                raise SandboxTimeoutError(f"sandbox {self.object_id} {why}")
            if state in ("terminated", "failed"):
                raise SandboxTerminatedError(f"sandbox {self.object_id} was terminated: {why}".rstrip(": "))

    @aio_method
    def tunnels(self, timeout: float = 50) -> dict[int, Tunnel]:
        """The sandbox's ports reachable from outside: container port -> :class:`Tunnel` (Modal's).

        Raises:
            SandboxTimeoutError: it has not started within ``timeout`` seconds.
            SandboxTerminatedError: it has ended (its ports with it).
        """
        deadline = time.monotonic() + timeout
        while self._refresh(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())), until="running")["state"] == (
            "queued"
        ):
            if time.monotonic() >= deadline:
                raise SandboxTimeoutError(f"sandbox {self.object_id} has not started within {timeout:g} s")
        if self._info["state"] != "running":
            raise SandboxTerminatedError(f"sandbox {self.object_id} has ended ({self._info['state']}): no tunnels")
        api = urlsplit(self._client.server_url)
        scheme = api.scheme or "http"
        host, port = api.hostname or "127.0.0.1", api.port or (443 if scheme == "https" else 80)
        found = {}
        for number, raw in (self._info.get("tunnels") or {}).items():
            found[int(number)] = Tunnel(
                host,
                port,
                raw.get("host"),
                raw.get("port"),
                path=f"{api.path.rstrip('/')}/v1/sandboxes/{self.object_id}/tunnels/{number}",
                scheme=scheme,
            )
        return found

    @aio_method
    def terminate(self) -> None:
        """End the sandbox now: its processes are killed and its container removed."""
        self._client.request("POST", f"/v1/sandboxes/{self.object_id}/terminate")
        deadline = time.monotonic() + 60
        while self._info.get("state") not in _TERMINAL and time.monotonic() < deadline:
            self._refresh(5)

    def detach(self) -> None:
        """Modal's: drop this handle's connection (the sandbox keeps running)."""

    # ---- processes ----

    @aio_method
    def exec(
        self,
        *cmd: str,
        workdir: str | None = None,
        timeout: float | None = None,
        secrets: Sequence[Secret] = (),
        env: dict[str, str] | None = None,
        pty: bool = False,
        text: bool = True,
    ) -> ContainerProcess:
        """Run ``cmd`` in the sandbox; its output streams as it is written.

        Raises:
            SandboxTerminatedError: the sandbox has ended.
        """
        if not cmd or not all(isinstance(c, str) for c in cmd):
            raise InvalidError("exec(*cmd): give the command and its arguments as strings")
        body: dict[str, Any] = {"cmd": list(cmd), "workdir": workdir, "timeout": timeout, "pty": pty}
        specs = _secret_specs("Sandbox.exec", secrets, env)
        if specs:
            body["secrets"] = specs
        reply = self._client.request("POST", f"/v1/sandboxes/{self.object_id}/exec", json=body)
        return ContainerProcess(self._client, self.object_id, reply["process_id"], text)

    # ---- files ----

    def _helper(self, *args: str, data: bytes | None = None) -> bytes:
        process = self.exec("python", "-u", INIT, *args, text=False)
        if data is not None:
            process.stdin.write(data)
        process.stdin.write_eof()
        process.stdin.drain()
        out = process.stdout.read()
        err = process.stderr.read()
        code = process.wait()
        if code == 3:
            try:
                failure = json.loads(err.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                failure = {"message": err.decode(errors="replace")}
            raise SandboxFilesystemError(failure["message"])
        if code != 0:
            raise SandboxFilesystemError(
                f"the file operation {args[0]} failed with exit code {code}: {err.decode(errors='replace')[-500:]}"
            )
        return out

    def _file_read(self, path: str) -> bytes:
        return self._helper("read", path)

    def _file_write(self, path: str, data: bytes, *, append: bool) -> None:
        self._helper("write", path, "a" if append else "w", data=data)

    def _file_op(self, op: str, path: str) -> str:
        if op == "exists":
            process = self.exec("test", "-e", path)
            return "1" if process.wait() == 0 else "0"
        raise InvalidError(op)

    def open(self, path: str, mode: str = "r") -> _FileIO:
        """Open a file in the sandbox: ``r``, ``w``, ``a`` (``b`` for bytes, ``+`` to read and write)."""
        return _FileIO(self, path, mode)

    @aio_method
    def ls(self, path: str) -> builtins.list[str]:  # `list` in this class is Sandbox.list
        """The names in a directory of the sandbox."""
        return json.loads(self._helper("ls", path))

    @aio_method
    def mkdir(self, path: str, parents: bool = False) -> None:
        """Make a directory (with its parents when asked)."""
        self._helper("mkdir", path, "1" if parents else "0")

    @aio_method
    def rm(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory (its contents too with ``recursive``)."""
        self._helper("rm", path, "1" if recursive else "0")

    # ---- images ----

    @aio_method
    def snapshot_filesystem(self) -> Image:
        """A new image of the sandbox's file system as it is now (for functions and other sandboxes)."""
        reply = self._client.request("POST", f"/v1/sandboxes/{self.object_id}/snapshot", timeout=180)
        return Image.from_registry(reply["image"])
