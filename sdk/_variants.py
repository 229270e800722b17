"""``with_options``: the same code with other options, run as a function of its own (its own pool).

``Function.with_options(...)`` and ``Cls.with_options(...)`` give a handle that asks the server, on its
first call, for the variant of the base function with those options (``POST /v1/functions/{id}/variants``):
one function per distinct option set, reused by later calls and by other processes. Nothing is sent
before that first call, so a module can define a variant at import time, before the app runs.

Example::

    slow = app.function(timeout=60)(work)
    quick = slow.with_options(timeout=5, memory=256)   # its own containers, its own limits
    quick.spawn_map(range(100))

As in Modal, ``secrets=`` and ``volumes=`` replace the base function's, and an option cannot be unset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import Client
from .exception import InvalidError, UnsupportedOptionError
from .functions import Function
from .retries import Retries

if TYPE_CHECKING:
    from .secret import Secret
    from .volume import Volume

WITH_OPTIONS = frozenset(
    {
        "cpu",
        "memory",
        "gpu",
        "timeout",
        "retries",
        "max_containers",
        "min_containers",
        "buffer_containers",
        "scaledown_window",
        "volumes",
        "secrets",
    }
)
_NOT_YET = frozenset({"env", "region", "cloud", "routing_region"})  # Modal's too; refused until implemented


def check_options(where: str, options: dict[str, Any]) -> dict[str, Any]:
    """The ``with_options`` keywords, checked; None values dropped (they mean "as the base function")."""
    from .app import _check_volumes, _gpu_option
    from .secret import check_secrets

    unknown = sorted(set(options) - WITH_OPTIONS - _NOT_YET)
    if unknown:
        raise InvalidError(f"{where}: unknown options {unknown}; known: {sorted(WITH_OPTIONS)}")
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in _NOT_YET:
            raise UnsupportedOptionError(f"{where}: the option {name}= is not implemented in MiniModal yet")
        if name == "retries":
            value = Retries.of(value).to_json()  # type: ignore[union-attr]
        elif name == "gpu":
            value = _gpu_option(value)
        elif name in ("cpu", "memory"):
            value = value[0] if isinstance(value, tuple) else value  # (request, limit): the request is placed
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise InvalidError(f"{where}: {name}={options[name]!r}: give a positive number")
        elif name == "volumes":
            value = _check_volumes(value)
        elif name == "secrets":
            value = check_secrets(where, value)
        checked[name] = value
    return checked


def _request_body(options: dict[str, Any]) -> dict[str, Any]:
    """What the variants route takes: volumes by id (created or looked up now), secrets as deploy specs."""
    wire = {k: v for k, v in options.items() if k not in ("volumes", "secrets")}
    volumes: dict[str, Volume] | None = options.get("volumes")
    if volumes is not None:
        wire["volumes"] = {path: volume.object_id for path, volume in volumes.items()}
    body: dict[str, Any] = {"options": wire}
    secrets: list[Secret] | None = options.get("secrets")
    if secrets is not None:
        body["secrets"] = [secret._spec() for secret in secrets]
    return body


class FunctionVariant(Function[Any, Any]):
    """A function with other options: its id is the server's variant of the base function's current id."""

    def __init__(self, base: Function[Any, Any], options: dict[str, Any]) -> None:
        if isinstance(base, FunctionVariant):  # f.with_options(a=1).with_options(b=2): one variant of f
            options, base = {**base._variant_options, **options}, base._base
        super().__init__(base._app, base._raw_f, base._tag, base._options, base._image)
        self._base: Function[Any, Any] = base
        self._variant_options: dict[str, Any] = options
        self._is_generator = base._is_generator
        self._extra_spec = base._extra_spec
        self._web_url = base._web_url
        self._resolved: tuple[str, str] | None = None  # (base function id, variant id)

    def __repr__(self) -> str:
        return f"Function({self._tag!r}.with_options({', '.join(sorted(self._variant_options))}))"

    def __reduce__(self) -> tuple[Any, ...]:
        # Compact and complete: a container that unpickles it calls the same variant without asking again.
        return (_rebuild, (self._base, self._variant_options, self._resolved))

    @property
    def object_id(self) -> str | None:
        base_id = self._base.object_id
        if base_id is not None and self._resolved is not None and self._resolved[0] == base_id:
            return self._resolved[1]
        return None

    @object_id.setter
    def object_id(self, value: str | None) -> None:
        if value is not None:
            raise InvalidError("a with_options() variant takes its id from its base function")

    def _hydrated_id(self) -> str:
        base_id = self._base._hydrated_id()
        if self._resolved is None or self._resolved[0] != base_id:
            reply = Client.from_config().request(
                "POST", f"/v1/functions/{base_id}/variants", json=_request_body(self._variant_options)
            )
            self._resolved = (base_id, reply["function_id"])
        return self._resolved[1]


def _rebuild(base: Function[Any, Any], options: dict[str, Any], resolved: tuple[str, str] | None) -> FunctionVariant:
    variant = FunctionVariant(base, options)
    variant._resolved = resolved
    return variant


def with_options(base: Function[Any, Any], options: dict[str, Any]) -> FunctionVariant:
    """``base.with_options(**options)``."""
    return FunctionVariant(base, check_options(f"{base._tag}.with_options()", options))
