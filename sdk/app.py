"""``App``: groups functions and local entrypoints, and runs them against a server.

Example::

    import minimodal

    app = minimodal.App("demo")

    @app.function(timeout=60)
    def square(x):
        return x * x

    @app.local_entrypoint()
    def main():
        print(square.remote(4))
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import itertools
import logging
import pickle
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._client import Client
from ._progress import Bar
from ._serialization import serialize_function
from ._source import Source, source_of
from ._stream import AppLogs
from .concurrency import options_of_function as concurrency_options
from .exception import ImageBuildError, InvalidError, NotFoundError, UnsupportedOptionError
from .functions import Function, FunctionOptions
from .image import Image
from .protocol import ImageStatus, b64, parse_gpu
from .retries import Retries
from .runtime import output_enabled
from .schedule import Schedule
from .secret import Secret, check_secrets
from .volume import Volume
from .web import web_entry

if TYPE_CHECKING:
    from .cls import Cls

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("minimodal")
_LIVE_APPS: weakref.WeakSet[App] = weakref.WeakSet()  # every App made in this process (found by tag in containers)


_SERIALS = itertools.count()


def live_apps() -> list[App]:
    """The App objects of this process, oldest first."""
    return sorted(_LIVE_APPS, key=lambda app: app._serial)


# Options that Modal accepts and MiniModal will implement; until then a non-default value is refused.
_DEPRECATED = {
    "keep_warm": "min_containers",
    "concurrency_limit": "max_containers",
    "container_idle_timeout": "scaledown_window",
    "allow_concurrent_inputs": "@minimodal.concurrent",
}


def _refuse_unimplemented(where: str, options: dict[str, Any]) -> None:
    for name, value in options.items():
        if value not in (None, False, {}, [], ()):
            raise UnsupportedOptionError(
                f"{where}: the option {name}={value!r} is not implemented in MiniModal yet; remove it to run now"
            )


def _container_runtime_option(experimental_options: dict[str, Any] | None) -> str | None:
    """``experimental_options={"container_runtime": "runsc"}``: run only on a worker whose containers use gVisor.

    Modal runs every container under gVisor and ignores keys it does not know here, so the same code runs
    on both; MiniModal places the function by the workers' ``MINIMODAL_CONTAINER_RUNTIME``.
    """
    value = (experimental_options or {}).get("container_runtime")
    aliases = {"gvisor": "runsc", "runsc": "runsc", "runc": "runc"}
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in aliases:
        raise InvalidError(f"container_runtime={value!r}: give 'runsc' (or 'gvisor') or 'runc'")
    return aliases[value.lower()]


def _gpu_option(gpu: Any) -> str | None:
    """Check ``gpu=`` ("T4", "A100:2", "any"); the scheduler places the function on a worker with that GPU."""
    if gpu is None:
        return None
    try:
        parse_gpu(gpu)
    except ValueError as exc:
        raise InvalidError(str(exc)) from None
    return str(gpu).strip()


def _check_volumes(volumes: Any) -> dict[str, Volume]:
    if not volumes:
        return {}
    if not isinstance(volumes, dict) or not all(
        isinstance(path, str) and path.startswith("/") and isinstance(vol, Volume) for path, vol in volumes.items()
    ):
        raise InvalidError('volumes= takes {"/absolute/path": minimodal.Volume, ...}')
    return dict(volumes)


def _check_image(image: Any) -> None:
    if image is not None and not isinstance(image, Image):
        raise InvalidError(f"image={image!r}: give a minimodal.Image, e.g. Image.debian_slim().pip_install(...)")


def _ensure_image(client: Client, image: Image) -> str:
    """Upload the image's files, register it, and wait for its build; return its id."""
    for sha, data in image.files.items():
        try:
            client.request("HEAD", f"/v1/files/{sha}", raw=True)
        except NotFoundError:
            client.request("PUT", f"/v1/files/{sha}", data=data, timeout=600)
    reply = client.request("POST", "/v1/images", json=image.spec())
    cursor = "0-0"
    bar = Bar(f"building {reply['image_id'][:12]}") if reply["status"] == ImageStatus.BUILDING else None
    try:
        while True:
            for line in reply.get("logs", []):
                if output_enabled():
                    print(f"[build {reply['image_id'][:12]}] {line}", file=sys.stderr, flush=True)
                if bar is not None and line.startswith("=> "):
                    bar.advance()  # one step per layer
            if reply["status"] != ImageStatus.BUILDING:
                break
            reply = client.request("GET", f"/v1/images/{reply['image_id']}", params={"cursor": cursor, "timeout": 10})
            cursor = reply["cursor"]
    finally:
        if bar is not None:
            bar.close()
    if reply["status"] == ImageStatus.FAILED:
        raise ImageBuildError(f"image {reply['image_id']} failed to build: {reply.get('error')}")
    return reply["image_id"]


def _upload_files(client: Client, files: dict[str, bytes]) -> None:
    """Upload the files the server lacks (content-addressed: an unchanged file never travels again)."""
    by_sha = {hashlib.sha256(data).hexdigest(): data for data in files.values()}
    if not by_sha:
        return
    missing = client.request("POST", "/v1/files/missing", json={"shas": sorted(by_sha)})["missing"]
    for sha in missing:
        client.request("PUT", f"/v1/files/{sha}", data=by_sha[sha], timeout=600)


class LocalEntrypoint:
    """A function that runs locally under ``minimodal run``; calling it calls the raw function."""

    def __init__(self, app: App, raw_f: Callable[..., Any]) -> None:
        self.app = app
        self.raw_f = raw_f
        self.__name__ = raw_f.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)


class App:
    """A named group of functions. ``with app.run():`` (or ``minimodal run``) makes them callable remotely."""

    def __init__(
        self,
        name: str | None = None,
        *,
        tags: dict[str, str] | None = None,
        image: Any = None,
        secrets: Any = (),
        volumes: Any = None,
        include_source: bool = True,
    ) -> None:
        self._volumes = _check_volumes(volumes)  # mounted in every function of the app
        self._secrets = check_secrets(f"App({name!r})", list(secrets) if isinstance(secrets, tuple) else secrets)
        self._function_secrets: dict[str, list[Secret]] = {}
        self._function_volumes: dict[str, dict[str, Volume]] = {}
        _check_image(image)
        self.image: Image | None = image
        self.name = name
        self.tags = dict(tags or {})
        self.app_id: str | None = None
        self.deployed_version: int | None = None  # set by deploy()
        self._functions: dict[str, Function[Any, Any]] = {}
        self._entrypoints: dict[str, LocalEntrypoint] = {}
        self._serial = next(_SERIALS)
        _LIVE_APPS.add(self)

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    @property
    def registered_functions(self) -> dict[str, Function[Any, Any]]:
        return dict(self._functions)

    @property
    def registered_entrypoints(self) -> dict[str, LocalEntrypoint]:
        return dict(self._entrypoints)

    def function(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        schedule: Any = None,
        secrets: Any = None,
        env: dict[str, str | None] | None = None,
        gpu: Any = None,
        serialized: bool = False,
        network_file_systems: Any = None,
        volumes: Any = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
        proxy: Any = None,
        retries: Any = None,
        timeout: int = 300,
        startup_timeout: int | None = None,
        name: str | None = None,
        is_generator: bool | None = None,
        cloud: str | None = None,
        region: Any = None,
        routing_region: Any = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        restrict_modal_access: bool = False,
        single_use_containers: bool = False,
        max_inputs: int | None = None,
        i6pn: bool | None = None,
        include_source: bool | None = None,
        experimental_options: dict[str, Any] | None = None,
        **deprecated: Any,
    ) -> Callable[[Callable[P, R]], Function[P, R]]:
        """Register a global function to run remotely. Options are keyword-only, as in Modal."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.function() with parentheses, not @app.function")
        for old in deprecated:
            hint = _DEPRECATED.get(old)
            raise InvalidError(f"@app.function() got an unknown option {old!r}" + (f"; use {hint}" if hint else ""))
        if timeout is None or not 1 <= timeout <= 24 * 3600:
            raise InvalidError(f"timeout={timeout!r}: give seconds between 1 and 86400")
        if scaledown_window is not None and not 2 <= scaledown_window <= 3600:
            raise InvalidError(f"scaledown_window={scaledown_window!r}: give seconds between 2 and 3600")
        cpu_request = cpu[0] if isinstance(cpu, tuple) else cpu
        memory_request = memory[0] if isinstance(memory, tuple) else memory
        if cpu_request is not None and cpu_request <= 0:
            raise InvalidError(f"cpu={cpu!r}: give a positive number of cores")
        if memory_request is not None and memory_request <= 0:
            raise InvalidError(f"memory={memory!r}: give a positive number of MiB")
        for option, value, least in (
            ("min_containers", min_containers, 0),
            ("max_containers", max_containers, 1),
            ("buffer_containers", buffer_containers, 0),
        ):
            if value is not None and (not isinstance(value, int) or value < least):
                raise InvalidError(f"{option}={value!r}: give a whole number of at least {least}")
        retry_policy = Retries.of(retries)
        options = FunctionOptions(
            cpu=cpu_request,
            memory=memory_request,
            timeout=timeout,
            scaledown_window=scaledown_window,
            min_containers=min_containers or None,
            max_containers=max_containers,
            buffer_containers=buffer_containers or None,
            retries=retry_policy.to_json() if retry_policy and retry_policy.max_retries else None,
            gpu=_gpu_option(gpu),
            block_network=True if block_network else None,
            container_runtime=_container_runtime_option(experimental_options),
        )
        # Accepted for Modal compatibility, refused until implemented: never silently ignored.
        if schedule is not None and not isinstance(schedule, Schedule):
            raise InvalidError(f"schedule={schedule!r}: give minimodal.Period(...) or minimodal.Cron(...)")
        not_yet = {
            "env": env,
            "ephemeral_disk": ephemeral_disk,
            "proxy": proxy,
            "cloud": cloud,
            "region": region,
            "routing_region": routing_region,
            "nonpreemptible": nonpreemptible,
            "enable_memory_snapshot": enable_memory_snapshot,
            "restrict_modal_access": restrict_modal_access,
            "single_use_containers": single_use_containers,
            "max_inputs": max_inputs,
            "i6pn": i6pn,
            "startup_timeout": startup_timeout,
            "experimental_options": {k: v for k, v in (experimental_options or {}).items() if k != "container_runtime"},
            "network_file_systems": network_file_systems,
        }

        function_secrets = check_secrets("@app.function()", secrets)
        function_volumes = _check_volumes(volumes)

        def wrapper(raw_f: Callable[P, R]) -> Function[P, R]:
            if inspect.isclass(raw_f):
                raise TypeError("@app.function() is for functions; decorate classes with @app.cls()")
            tag = name or raw_f.__qualname__
            _refuse_unimplemented(f"@app.function() on {tag}", not_yet)
            if "<locals>" in raw_f.__qualname__ and not serialized:
                raise InvalidError(f"{tag} is not a global function; define it at module level or pass serialized=True")
            if tag in self._functions:
                logger.warning("function %r is defined twice in app %r; the later definition wins", tag, self.name)
            _check_image(image)
            web = web_entry(raw_f)  # a web endpoint ships a request handler around the function (sdk/web.py)
            inputs: dict[str, Any] = concurrency_options(raw_f, tag)  # @minimodal.concurrent / @minimodal.batched
            if web and "batch_max_size" in inputs:
                raise InvalidError(f"{tag}: a web endpoint cannot be @minimodal.batched")
            with_inputs = dataclasses.replace(options, **inputs) if inputs else options
            function: Function[P, R] = Function(self, web[0] if web else raw_f, tag, with_inputs, image)
            function._serialized = serialized
            if web:
                function._extra_spec["web"], function._is_generator = web[1], True  # the response streams
            if schedule is not None:
                function._extra_spec["schedule"] = schedule.to_json()  # acted on when the app is deployed
            self._functions[tag] = function
            self._function_secrets[tag] = function_secrets
            self._function_volumes[tag] = function_volumes
            return function

        return wrapper

    def cls(self, _warn_parentheses_missing: Any = None, **options: Any) -> Callable[[type], Cls]:
        """Register a class: its ``@method()``s run remotely, its ``@enter()`` hooks once per container.

        Takes the options of :meth:`function` (see sdk/cls.py).
        """
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.cls() with parentheses, not @app.cls")
        from .cls import make_cls

        def wrapper(user_cls: type) -> Cls:
            tag = options.get("name") or user_cls.__qualname__
            return make_cls(self, user_cls, tag, lambda name: self.function(**{**options, "name": name}))

        return wrapper

    def local_entrypoint(
        self, _warn_parentheses_missing: Any = None, *, name: str | None = None
    ) -> Callable[[Callable[..., Any]], LocalEntrypoint]:
        """Register a function that runs locally under ``minimodal run`` (its parameters become options)."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("use @app.local_entrypoint() with parentheses")

        def wrapper(raw_f: Callable[..., Any]) -> LocalEntrypoint:
            tag = name or raw_f.__qualname__
            if tag in self._entrypoints:
                raise InvalidError(f"duplicate local entrypoint {tag!r} in app {self.name!r}")
            entrypoint = LocalEntrypoint(self, raw_f)
            self._entrypoints[tag] = entrypoint
            return entrypoint

        return wrapper

    def _volume_option(self, tag: str) -> dict[str, Any]:
        """``{"volumes": {path: volume id}}`` (looked up, or created when asked, now), or nothing."""
        mounts = {**self._volumes, **self._function_volumes.get(tag, {})}
        return {"volumes": {path: vol.object_id for path, vol in mounts.items()}} if mounts else {}

    def _code(self, client: Client, f: Function[Any, Any], sources: dict[str, Source | None]) -> tuple[bytes, dict]:
        """The function's code and the spec it adds: a reference into its module's shipped source (import by
        name, as Modal does), or the function pickled by value where its module cannot be imported remotely."""
        module = getattr(f._raw_f, "__module__", None) or ""
        if module not in sources:
            sources[module] = None if f._serialized else source_of(f._raw_f)
            if sources[module] is not None:
                _upload_files(client, sources[module].files)  # type: ignore[union-attr]
        source = sources[module]
        if f._serialized or source is None:
            return serialize_function(f._raw_f), {}
        manifest = source.manifest()
        qualname = getattr(f._raw_f, "__qualname__", None)  # tells apart two apps of one name in one module
        ref = {"module": source.module, "app": self.name, "tag": f._tag, "qualname": qualname, "files": manifest}
        return pickle.dumps({"minimodal_ref": 1, **ref}, protocol=4), {
            "source": {"module": source.module, "files": manifest}
        }

    def _register(self, client: Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Build the images and store every function (code, image, options, spec) at ``path``; hydrate them."""
        image_ids: dict[str, str] = {}
        functions: list[dict[str, Any]] = []
        sources: dict[str, Source | None] = {}
        for tag, f in self._functions.items():
            image = f._image or self.image or Image.debian_slim()
            if image.digest() not in image_ids:
                image_ids[image.digest()] = _ensure_image(client, image)
            code, source_spec = self._code(client, f, sources)
            functions.append(
                {
                    "tag": tag,
                    "code": b64(code),
                    "options": {**f._options.to_json(), **self._volume_option(tag)},
                    "image": image_ids[image.digest()],
                    "spec": {**f._spec(), **source_spec},
                    # App-level secrets first: the function's own override them.
                    "secrets": [s._spec() for s in self._secrets + self._function_secrets.get(tag, [])],
                }
            )
        reply = client.request("POST", path, json={**body, "name": self.name, "functions": functions})
        self.app_id = reply["app_id"]
        for tag, function_id in reply["functions"].items():
            self._functions[tag].object_id = function_id
            self._functions[tag]._web_url = reply.get("web_urls", {}).get(tag)
        return reply

    @contextlib.contextmanager
    def run(self, *, detach: bool = False, **_ignored: Any) -> Iterator[App]:
        """Create an ephemeral app on the server with the current code of every function; stop it on exit."""
        client = Client.from_config()
        self._register(client, "/v1/apps", {})
        assert self.app_id is not None
        logs = AppLogs(client, self.app_id) if output_enabled() else None  # every call's prints, live
        try:
            yield self
        finally:
            if logs is not None:
                logs.stop()
            if not detach:
                with contextlib.suppress(Exception):
                    client.request("POST", f"/v1/apps/{self.app_id}/stop", timeout=120)
            for f in self._functions.values():
                f.object_id = None
            self.app_id = None

    def deploy(self, *, name: str | None = None) -> App:
        """Deploy the app: a new persistent version that ``Function.from_name`` finds; the old one is replaced.

        Example::

            app.deploy()
            minimodal.Function.from_name("demo", "square").remote(3)
        """
        from ._deploy import deploy_app

        return deploy_app(self, name)
