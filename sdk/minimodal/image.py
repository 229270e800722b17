"""``Image``: an immutable description of the container a function runs in (Modal's builder API).

Each builder method returns a new Image with one more layer; the original is unchanged. A layer is a
JSON spec; local files travel as content-addressed uploads and only their SHA-256 is in the spec, so
a layer's identity (computed by the builder on a worker) changes exactly when its spec, its parent or
the bytes it adds change. Nothing is built or uploaded until an app runs.

Example::

    image = minimodal.Image.debian_slim().apt_install("curl").pip_install("six")

    @app.function(image=image)
    def f(): ...
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .exception import InvalidError, UnsupportedOptionError
from .protocol import is_python_version

_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")


def client_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _deterministic_tar(entries: list[tuple[str, Path]]) -> bytes:
    """A tar of ``(name in archive, local path)`` whose bytes depend only on names and contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(entries):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _matches(name: str, patterns: Sequence[str]) -> bool:
    parts = PurePosixPath(name).parts
    return any(PurePosixPath(name).match(p) or any(PurePosixPath(part).match(p) for part in parts) for p in patterns)


@dataclass(frozen=True)
class Image:
    """Layers from a base up. Build it by chaining; see the module docstring."""

    layers: tuple[dict[str, Any], ...]
    files: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)  # sha256 -> bytes to upload
    python_version: str = field(default_factory=client_python)

    # ---- bases ----

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        """Debian slim with Python ``python_version`` (default: this interpreter's major.minor).

        The cluster builds the versions its Docker workers have a base image for (``make docker-base``
        gives 3.11 and 3.13); any other fails the deploy with an InvalidError naming those.
        """
        version = client_python() if python_version is None else python_version
        if not is_python_version(version):
            raise InvalidError(
                f"Image.debian_slim(python_version={version!r}): give a major.minor string such as '3.13'"
            )
        return cls(({"op": "debian_slim", "python": version},), {}, version)

    @classmethod
    def from_registry(cls, tag: str, **_ignored: Any) -> Image:
        """An image already on the worker's Docker engine (these machines cannot pull from a registry)."""
        if not tag or not isinstance(tag, str):
            raise InvalidError("Image.from_registry(tag): give an image tag such as 'python:3.11-slim'")
        return cls(({"op": "from_registry", "tag": tag},), {})

    @classmethod
    def from_dockerfile(cls, path: str | Path, *, context_dir: str | Path | None = None) -> Image:
        """Build the base from a Dockerfile; its folder (or ``context_dir``) is the build context."""
        dockerfile = Path(path)
        if not dockerfile.is_file():
            raise InvalidError(f"Image.from_dockerfile: no such file {path}")
        context = Path(context_dir) if context_dir else dockerfile.parent
        files = [(str(p.relative_to(context)), p) for p in context.rglob("*") if p.is_file()]
        tar = _deterministic_tar(files)
        sha = hashlib.sha256(tar).hexdigest()
        return cls(({"op": "from_dockerfile", "dockerfile": dockerfile.read_text(), "context": sha},), {sha: tar})

    # ---- layers ----

    def _with(self, layer: dict[str, Any], files: dict[str, bytes] | None = None) -> Image:
        return Image((*self.layers, layer), {**self.files, **(files or {})}, self.python_version)

    def _file(self, data: bytes) -> tuple[str, dict[str, bytes]]:
        sha = hashlib.sha256(data).hexdigest()
        return sha, {sha: data}

    def apt_install(self, *packages: str | list[str]) -> Image:
        return self._with({"op": "apt_install", "packages": _flatten(packages)})

    def pip_install(
        self,
        *packages: str | list[str],
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        find_links: str | None = None,
    ) -> Image:
        spec = {
            "op": "pip_install",
            "packages": _flatten(packages),
            "index_url": index_url,
            "extra_index_url": extra_index_url,
            "pre": pre,
            "find_links": find_links,
            "extra_options": extra_options,
        }
        return self._with({k: v for k, v in spec.items() if v not in (None, "", False)})

    def uv_pip_install(
        self,
        *packages: str | list[str],
        requirements: Sequence[str | Path] | None = None,
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        uv_version: str | None = None,
        env: dict[str, str] | None = None,
        secrets: Any = None,
        gpu: Any = None,
    ) -> Image:
        """Install packages with uv into the image's Python (what the runner imports).

        uv itself is installed in the build from the package index (``pip install uv``, at ``uv_version``
        when given) under ``/opt/mm/uv``, outside the function's environment. ``requirements`` are local
        files (uploaded like any local file); ``env`` is set for the install only.

        Example::

            image = minimodal.Image.debian_slim().uv_pip_install("numpy", requirements=["requirements.txt"])
        """
        if force_build or secrets or gpu:
            given = [n for n, v in (("force_build", force_build), ("secrets", secrets), ("gpu", gpu)) if v]
            raise UnsupportedOptionError(f"uv_pip_install: {', '.join(given)} is not implemented in MiniModal yet")
        names = _flatten(packages)
        options = [p for p in names if p.startswith("-")]
        if options:
            raise InvalidError(f"uv_pip_install: {options} look like options; pass them as extra_options=")
        if uv_version is not None and not _VERSION.match(uv_version):
            raise InvalidError(f"uv_pip_install(uv_version={uv_version!r}): give a version such as '0.8.4'")
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidError("uv_pip_install: env keys and values must be strings")
        files: dict[str, bytes] = {}
        shas = []
        for path in requirements or ():
            if not Path(path).is_file():
                raise InvalidError(f"uv_pip_install: no such requirements file {path}")
            sha, data = self._file(Path(path).read_bytes())
            shas.append(sha)
            files.update(data)
        if not names and not shas:
            return self  # nothing to install, as in Modal
        spec = {
            "op": "uv_pip_install",
            "packages": sorted(names),
            "requirements": shas,
            "index_url": index_url,
            "extra_index_url": extra_index_url,
            "find_links": find_links,
            "pre": pre,
            "extra_options": extra_options,
            "uv_version": uv_version,
            "env": dict(sorted((env or {}).items())),
        }
        return self._with(
            {k: v for k, v in spec.items() if k == "packages" or v not in (None, "", False, [], {})}, files
        )

    def run_commands(self, *commands: str | list[str]) -> Image:
        return self._with({"op": "run_commands", "commands": _flatten(commands)})

    def env(self, vars: dict[str, str]) -> Image:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in vars.items()):
            raise InvalidError("Image.env: keys and values must be strings")
        return self._with({"op": "env", "vars": dict(sorted(vars.items()))})

    def workdir(self, path: str | PurePosixPath) -> Image:
        return self._with({"op": "workdir", "path": str(path)})

    def add_local_file(self, local_path: str | Path, remote_path: str, *, copy: bool = True) -> Image:
        path = Path(local_path)
        if not path.is_file():
            raise InvalidError(f"add_local_file: no such file {local_path}")
        sha, files = self._file(path.read_bytes())
        remote = remote_path if not remote_path.endswith("/") else remote_path + path.name
        return self._with(
            {
                "op": "add_local_file",
                "sha": sha,
                "remote": remote,
                "mode": "755" if path.stat().st_mode & 0o111 else "644",
            },
            files,
        )

    def add_local_dir(
        self,
        local_path: str | Path,
        remote_path: str,
        *,
        copy: bool = True,
        ignore: Sequence[str] | Callable[[Path], bool] = (),
    ) -> Image:
        root = Path(local_path)
        if not root.is_dir():
            raise InvalidError(f"add_local_dir: no such directory {local_path}")
        entries = []
        for p in root.rglob("*"):
            if not p.is_file():
                continue
            name = str(p.relative_to(root))
            skip = ignore(p) if callable(ignore) else _matches(name, ignore)
            if not skip:
                entries.append((name, p))
        sha, files = self._file(_deterministic_tar(entries))
        return self._with({"op": "add_local_dir", "sha": sha, "remote": remote_path}, files)

    def add_local_python_source(
        self, *modules: str, copy: bool = True, ignore: Sequence[str] = ("__pycache__", "*.pyc")
    ) -> Image:
        """Copy importable local modules or packages into the image, on its PYTHONPATH."""
        import importlib.util

        entries = []
        for module in modules:
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                raise InvalidError(f"add_local_python_source: cannot find module {module!r}")
            origin = Path(spec.origin)
            if spec.submodule_search_locations:  # a package: its whole folder
                for p in origin.parent.rglob("*"):
                    name = str(PurePosixPath(module.replace(".", "/")) / p.relative_to(origin.parent))
                    if p.is_file() and not _matches(name, ignore):
                        entries.append((name, p))
            else:
                entries.append((module.replace(".", "/") + ".py", origin))
        sha, files = self._file(_deterministic_tar(entries))
        return self._with({"op": "add_local_python_source", "sha": sha, "modules": sorted(modules)}, files)

    def run_function(
        self,
        raw_f: Callable[..., Any],
        *,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **_ignored: Any,
    ) -> Image:
        """Run ``raw_f(*args, **kwargs)`` once at build time (e.g. to download a model into the image)."""
        from ._serialization import serialize_function

        payload = serialize_function(lambda: raw_f(*args, **(kwargs or {})))
        sha, files = self._file(payload)
        return self._with({"op": "run_function", "sha": sha, "name": getattr(raw_f, "__qualname__", "fn")}, files)

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """Imports inside run in the container; locally, a missing package is tolerated."""
        try:
            yield
        except ImportError:
            from .runtime import is_local

            if not is_local():
                raise

    # ---- identity ----

    def spec(self) -> dict[str, Any]:
        """What the server is sent: the layers and the client's Python version."""
        return {"layers": list(self.layers), "python": self.python_version}

    @property
    def is_default(self) -> bool:
        return self.layers == ({"op": "debian_slim", "python": self.python_version},)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()


def _flatten(items: Sequence[str | list[str]]) -> list[str]:
    flat: list[str] = []
    for item in items:
        flat.extend([item] if isinstance(item, str) else list(item))
    if not all(isinstance(x, str) and x for x in flat):
        raise InvalidError("give non-empty strings")
    return flat
