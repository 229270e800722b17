"""The image builder: turns an Image spec (sdk/image.py) into tagged Docker images, one per layer.

Layer identity is ``sha256(parent identity + the layer's spec)``, where the spec carries the SHA-256
of every local file it adds and the first identity is the base image's Docker ID; each layer is
tagged ``minimodal/image:<identity>``, so a layer that exists is never rebuilt and a change rebuilds
from the changed layer up. Right above the base, a runtime layer checks the Python version and
installs the host's cloudpickle, which the runner needs.

With a registry (``MINIMODAL_REGISTRY``, e.g. ``127.0.0.1:5000``) the builder also pushes the base and
every layer as ``<registry>/<tag>``, and the image's tag is the registry's copy of the last layer: a
worker whose engine lacks it pulls it (:func:`pull`), and the pull brings every layer below it, the
base's too, so an engine with no image at all can run it. A builder that lacks a layer or the base
pulls it before building anything, so the identities (which start from the base's Docker ID, the same
after a pull) match on every machine and nothing built elsewhere is built again.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from minimodal.protocol import sorted_pythons

TAG_REPOSITORY = "minimodal/image"
DEFAULT_DEBIAN_SLIM = "python:{python}-slim"
UV_HOME = "/opt/mm/uv"  # uv_pip_install's uv, one folder per uv version, outside the function's environment

Log = Callable[[str], None]
FetchFile = Callable[[str], bytes]


class BuildError(Exception):
    """Raised when a layer fails to build; the message ends with the tail of the build log."""


class PullError(Exception):
    """Raised when an image cannot be pulled; ``missing`` is True when the registry has no such image."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def registry_of(image: str) -> str | None:
    """The registry host of an image reference (``127.0.0.1:5000/minimodal/image:ab``), or None for a local name."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def in_registry(registry: str, tag: str) -> str:
    """The name of ``tag``'s copy in ``registry`` (``tag`` itself when it names a registry already)."""
    return tag if registry_of(tag) else f"{registry}/{tag}"


def split_reference(image: str) -> tuple[str, str]:
    """``(repository, tag)`` of an image reference; the tag is ``latest`` when it names none."""
    head, slash, last = image.rpartition("/")
    name, colon, tag = last.partition(":")
    return (head + slash + name, tag) if colon else (image, "latest")


def pull(client: Any, image: str) -> str:
    """Pull ``image`` (a registry reference) into the engine of ``client``; return its Docker ID."""
    import docker.errors
    import requests

    registry = registry_of(image)
    if registry is None:
        raise PullError(f"{image} names no registry", missing=True)
    repository, tag = split_reference(image)
    try:
        return str(client.images.pull(repository, tag=tag).id)
    except docker.errors.NotFound as exc:
        raise PullError(
            f"the registry {registry} has no image {image}: {exc.explanation or exc}", missing=True
        ) from exc
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise PullError(
            f"cannot pull {image} from the registry {registry} ({exc}); is it running (MINIMODAL_REGISTRY)?",
            missing=False,
        ) from exc


def push(client: Any, tag: str, registry: str) -> str:
    """Push the local image ``tag`` to ``registry`` as ``<registry>/<tag>``; return that name.

    A ``tag`` that names another registry already is left alone (engines pull it from there themselves).

    Raises:
        PullError: the registry refused the push or cannot be reached (``missing`` is False).
    """
    import docker.errors
    import requests

    target = in_registry(registry, tag)
    if target == tag:
        return tag
    repository, version = split_reference(target)
    try:
        client.images.get(tag).tag(repository, version)
        for chunk in client.api.push(repository, tag=version, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                raise PullError(f"cannot push {target} to the registry {registry}: {message}", missing=False)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise PullError(
            f"cannot push {target} to the registry {registry} ({exc}); is it running (MINIMODAL_REGISTRY)?",
            missing=False,
        ) from exc
    return target


@dataclass
class BuildResult:
    tag: str
    events: list[dict[str, Any]] = field(default_factory=list)  # one per layer: identity, op, cached|built


def _context(dockerfile: str, files: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _instructions(layer: dict[str, Any], fetch: FetchFile) -> tuple[str, dict[str, bytes]]:
    """Dockerfile lines and context files for one user layer."""
    op = layer["op"]
    if op == "apt_install":
        packages = " ".join(shlex.quote(p) for p in layer["packages"])
        return (
            f"USER root\nRUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            f"--no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*"
        ), {}
    if op == "pip_install":
        flags = []
        for name in ("index_url", "extra_index_url", "find_links"):
            if layer.get(name):
                flags.append(f"--{name.replace('_', '-')} {shlex.quote(layer[name])}")
        if layer.get("pre"):
            flags.append("--pre")
        if layer.get("extra_options"):
            flags.append(layer["extra_options"])
        packages = " ".join(shlex.quote(p) for p in layer["packages"])
        pip = "python -m pip install --no-cache-dir --disable-pip-version-check"
        return f"USER root\nRUN {pip} {' '.join(flags)} {packages}", {}
    if op == "uv_pip_install":
        return _uv_pip_install(layer, fetch)
    if op == "run_commands":
        return "USER root\n" + "\n".join(f"RUN {command}" for command in layer["commands"]), {}
    if op == "env":
        return "ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in layer["vars"].items()), {}
    if op == "workdir":
        return f"WORKDIR {json.dumps(layer['path'])}", {}
    if op == "add_local_file":
        remote = json.dumps(layer["remote"])
        # COPY --chmod needs BuildKit; Debian's engine builds with the classic builder.
        return (
            f"USER root\nCOPY f {remote}\nRUN chmod {layer.get('mode', '644')} {shlex.quote(layer['remote'])}",
            {"f": fetch(layer["sha"])},
        )
    if op == "add_local_dir":
        return f"ADD d.tar {json.dumps(layer['remote'].rstrip('/') + '/')}", {"d.tar": fetch(layer["sha"])}
    if op == "add_local_python_source":
        # Not /root (mode 700): runners run as uid 1000.
        return "ADD s.tar /opt/mm/src/\nENV PYTHONPATH=/opt/mm/src", {"s.tar": fetch(layer["sha"])}
    if op == "run_function":
        return (
            'COPY fn.pkl /tmp/mm-build-fn.pkl\nUSER root\nRUN python -c "import cloudpickle; '
            "cloudpickle.load(open('/tmp/mm-build-fn.pkl', 'rb'))()\" && rm /tmp/mm-build-fn.pkl"
        ), {"fn.pkl": fetch(layer["sha"])}
    raise BuildError(f"unknown image layer {op!r}")


def base_pythons(client: Any, template: str = DEFAULT_DEBIAN_SLIM) -> list[str]:
    """The Python versions ``Image.debian_slim(python_version=)`` can build on this engine.

    A version counts when the engine has the image ``template`` names for it (``python:3.13-slim``),
    as docker/base/build.sh tags them; nothing is pulled, so no other version can be built here.
    """
    head, _, tail = template.partition("{python}")
    pattern = re.compile(re.escape(head) + r"(3\.\d{1,2})" + re.escape(tail) + "$")
    found = set()
    for image in client.api.images(filters={"reference": template.format(python="*")}):
        for tag in image.get("RepoTags") or []:
            # The engine names Docker Hub images without "docker.io/library/"; so do the templates.
            match = pattern.match(tag)
            if match:
                found.add(match.group(1))
    return sorted_pythons(found)


def _uv_pip_install(layer: dict[str, Any], fetch: FetchFile) -> tuple[str, dict[str, bytes]]:
    """uv from the package index (kept out of the function's environment), then ``uv pip install`` into
    the Python on PATH: the one the runner runs (``/opt/mm/venv`` in the base image)."""
    version = layer.get("uv_version")
    home = f"{UV_HOME}/{version or 'latest'}"
    pip = "python -m pip install --no-cache-dir --disable-pip-version-check"
    files = {f"req{i}.txt": fetch(sha) for i, sha in enumerate(layer.get("requirements", []))}
    flags = [f"-r /tmp/mm-{name}" for name in files]
    for name in ("index_url", "extra_index_url", "find_links"):
        if layer.get(name):
            flags.append(f"--{name.replace('_', '-')} {shlex.quote(layer[name])}")
    if layer.get("pre"):
        flags.append("--prerelease allow")  # uv's --pre
    if layer.get("extra_options"):
        flags.append(layer["extra_options"])
    packages = " ".join(shlex.quote(p) for p in layer.get("packages", []))
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in layer.get("env", {}).items())
    lines = ["USER root", *(f"COPY {name} /tmp/mm-{name}" for name in files)]
    lines.append(
        f"RUN test -x {home}/bin/uv || {pip} --target {home} {shlex.quote(f'uv=={version}' if version else 'uv')}"
    )
    install = f'{env} {home}/bin/uv pip install --python "$(command -v python)" --compile-bytecode --no-cache'
    lines.append(
        f"RUN {install.strip()} {' '.join(flags)} {packages}" + (" && rm -f /tmp/mm-req*.txt" if files else "")
    )
    return "\n".join(lines), files


class ImageBuilder:
    """Builds image specs with a docker SDK client (``docker.from_env()``)."""

    def __init__(
        self,
        client: Any,
        *,
        cloudpickle_version: str,
        debian_slim: str = DEFAULT_DEBIAN_SLIM,
        registry: str | None = None,
    ) -> None:
        self.client = client
        self.cloudpickle_version = cloudpickle_version
        self.debian_slim = debian_slim
        self.registry = registry

    def _local(self, tag: str) -> str | None:
        import docker.errors

        try:
            return self.client.images.get(tag).id
        except docker.errors.ImageNotFound:
            return None

    def _exists(self, tag: str, log: Log | None = None) -> str | None:
        """The Docker ID of ``tag`` on this engine, pulled first from the registry when it has a copy."""
        found = self._local(tag)
        if found is not None or self.registry is None:
            return found
        try:
            pull(self.client, in_registry(self.registry, tag))
        except PullError as exc:
            if not exc.missing:
                raise BuildError(str(exc)) from exc
            return None
        if in_registry(self.registry, tag) != tag:
            self.client.images.get(in_registry(self.registry, tag)).tag(*split_reference(tag))
        if log is not None:
            log(f"=> pulled {tag} from the registry {self.registry}")
        return self._local(tag)

    def _push(self, tag: str, log: Log) -> str:
        """Push ``tag`` to the registry as ``<registry>/<tag>``; return that name."""
        assert self.registry is not None
        try:
            target = push(self.client, tag, self.registry)
        except PullError as exc:
            raise BuildError(str(exc)) from exc
        if target != tag:
            log(f"=> pushed {target}")
        return target

    def _build(self, tag: str, dockerfile: str, files: dict[str, bytes], log: Log) -> None:
        tail: list[str] = []
        for chunk in self.client.api.build(
            fileobj=_context(dockerfile, files),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            text = chunk.get("stream") or chunk.get("status") or ""
            for line in text.splitlines():
                if line.strip():
                    log(line)
                    tail = (tail + [line])[-20:]
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                log(message)
                raise BuildError(f"{message}\n--- build log tail ---\n" + "\n".join(tail[-15:]))
        if self._local(tag) is None:
            raise BuildError("the build finished without an image\n" + "\n".join(tail[-15:]))

    def _base(self, layer: dict[str, Any], fetch: FetchFile, log: Log, events: list[dict[str, Any]]) -> str:
        """The base image's tag, building it first for from_dockerfile."""
        op = layer["op"]
        if op == "from_dockerfile":
            identity = hashlib.sha256(json.dumps(layer, sort_keys=True).encode()).hexdigest()[:32]
            tag = f"{TAG_REPOSITORY}:{identity}"
            if self._exists(tag, log) is None:
                files = dict(self._untar(fetch(layer["context"])))
                self._build(tag, layer["dockerfile"], files, log)
                events.append({"identity": identity, "op": op, "state": "built"})
            else:
                events.append({"identity": identity, "op": op, "state": "cached"})
            return tag
        tag = self.debian_slim.format(python=layer["python"]) if op == "debian_slim" else layer["tag"]
        if self._exists(tag, log) is None and op == "debian_slim":
            have = base_pythons(self.client, self.debian_slim)
            where = f"nor in the registry {self.registry}" if self.registry else "and no registry is configured"
            raise BuildError(
                f"Image.debian_slim(python_version={layer['python']!r}): this Docker engine has no {tag} {where}; "
                "the versions it can build are "
                + (", ".join(have) if have else "none")
                + " (docker/base/build.sh, `make docker-base`, builds 3.11 and 3.13)"
            )
        if self._exists(tag, log) is None:
            where = f"nor in the registry {self.registry}" if self.registry else "and no registry is configured"
            raise BuildError(
                f"the base image {tag!r} is not on this Docker engine {where}; build it with `make docker-base` "
                "(or set MINIMODAL_DEBIAN_SLIM_IMAGE; with MINIMODAL_REGISTRY a build elsewhere pushes it)"
            )
        return tag

    @staticmethod
    def _untar(data: bytes) -> list[tuple[str, bytes]]:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]

    def build(self, spec: dict[str, Any], fetch: FetchFile, log: Log) -> BuildResult:
        """Build (or find) every layer of ``spec``; return the final tag and what each layer did."""
        started = time.monotonic()
        layers, python = spec["layers"], spec["python"]
        events: list[dict[str, Any]] = []
        parent = self._base(layers[0], fetch, log, events)
        chain = [parent]  # what a registry gets: the base and every layer
        identity = self._local(parent) or ""
        runtime = {"op": "minimodal_runtime", "python": python, "cloudpickle": self.cloudpickle_version}
        for layer in [runtime, *layers[1:]]:
            identity = hashlib.sha256((identity + json.dumps(layer, sort_keys=True)).encode()).hexdigest()[:32]
            tag = f"{TAG_REPOSITORY}:{identity}"
            if self._exists(tag, log) is not None:
                events.append({"identity": identity, "op": layer["op"], "state": "cached"})
                log(f"=> {layer['op']}: cached {tag}")
            else:
                log(f"=> {layer['op']}: building {tag}")
                files: dict[str, bytes] = {}
                if layer["op"] == "minimodal_runtime":
                    lines = self._runtime_layer(python)
                else:
                    lines, files = _instructions(layer, fetch)
                self._build(tag, f"FROM {parent}\n{lines}\n", files, log)
                events.append({"identity": identity, "op": layer["op"], "state": "built"})
            parent = tag
            chain.append(tag)
        if self.registry is not None:
            # Each push sends only the layers the registry lacks: after the first, a manifest or two.
            parent = [self._push(tag, log) for tag in chain][-1]
        log(f"=> image {parent} ready in {time.monotonic() - started:.1f} s")
        return BuildResult(parent, events)

    def _runtime_layer(self, python: str) -> str:
        version = self.cloudpickle_version
        # Functions are imported by name in the container, so its Python may differ from the client's
        # ({python}); the runner needs 3.9 or newer. A function pickled by value (serialized=True) is
        # refused at runner start when the versions differ (workers/runtimes/docker.py).
        check = (
            "import sys; v='%d.%d' % sys.version_info[:2]; "
            "sys.exit(0 if sys.version_info >= (3, 9) else 'the image has Python ' + v + '; the runner needs 3.9+')"
        )
        return (
            "USER root\n"
            f"RUN python -c {shlex.quote(check)}\n"
            f"RUN python -c 'import cloudpickle, sys; sys.exit(cloudpickle.__version__ != \"{version}\")' "
            f"2>/dev/null || python -m pip install --no-cache-dir --disable-pip-version-check cloudpickle=={version}\n"
            # Runners run as uid 1000; give it a home in bases that lack the user (python:*-slim).
            "RUN id -u 1000 >/dev/null 2>&1 || useradd --uid 1000 --create-home --shell /bin/sh mm\n"
            "ENV PYTHONUNBUFFERED=1 MINIMODAL_IS_REMOTE=1"
        )
