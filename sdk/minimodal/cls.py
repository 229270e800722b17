"""Class-based functions: ``@app.cls()``, ``@enter``, ``@exit``, ``@method`` and ``parameter()``.

Example::

    @app.cls(max_containers=1)
    class Model:
        size: int = minimodal.parameter(default=1)

        @minimodal.enter()
        def load(self):
            self.weights = load_weights(self.size)   # once per container, not per call

        @minimodal.method()
        def predict(self, x):
            return self.weights(x)

    Model(size=3).predict.remote(4)
    list(Model().predict.map(range(10)))
    minimodal.Cls.from_name("my-app", "Model")().predict.remote(4)

The class is one function on the server; a call names the method and the parameters (reserved
keyword arguments), and the container keeps one instance per parameter set (see ``_clsentry``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import cloudpickle

from . import _clsentry, _clsweb
from ._aio import aio_iterator, aio_method
from ._clsentry import _REQUIRED, HOOK_ATTR, METHOD_KEY, PARAMS_KEY, ClsEntry
from ._clsweb import MethodWebEntry
from ._variants import FunctionVariant, check_options
from ._webentry import WEB_ATTR
from .concurrency import BATCHED_ATTR, CONCURRENT_ATTR
from .exception import InvalidError, UnsupportedOptionError
from .functions import Function, FunctionCall

if TYPE_CHECKING:
    from .app import App

cloudpickle.register_pickle_by_value(_clsentry)  # containers have cloudpickle, not minimodal
cloudpickle.register_pickle_by_value(_clsweb)


def _marker(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, HOOK_ATTR, kind)
        return fn

    return mark


def enter(*, snap: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method to run once per container (per parameter set) before its first input."""
    if snap:
        raise UnsupportedOptionError("@minimodal.enter(snap=True): memory snapshots are not implemented")
    return _marker("enter")


def exit() -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # Modal's name, shadowing the builtin
    """Mark a method to run when the container shuts down (a graceful scale-down)."""
    return _marker("exit")


def method(*, is_generator: bool | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as callable remotely: ``Model().name.remote(...)``."""
    return _marker("method")


class _Parameter:
    def __init__(self, default: Any) -> None:
        self.default = default


def parameter(*, default: Any = _REQUIRED, init: bool = True) -> Any:
    """Declare a class parameter: ``size: int = minimodal.parameter(default=1)``; set with ``Model(size=3)``."""
    if default is not _REQUIRED and not isinstance(default, str | int | float | bool | type(None)):
        raise InvalidError(f"parameter(default={default!r}): give a str, int, float or bool (stored as JSON)")
    return _Parameter(default)


def _parameters(user_cls: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(user_cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, _Parameter):
                found[name] = value.default
    return found


class _BoundMethod:
    """``Model(...).predict``: the class's function, with the method and parameters added to each call."""

    def __init__(self, owner: Cls, name: str, params: dict[str, Any]) -> None:
        self._owner, self._name, self._params = owner, name, params
        self._extra = {METHOD_KEY: name, PARAMS_KEY: params}

    def __repr__(self) -> str:
        return f"{self._owner._tag}.{self._name}"

    def _function(self) -> Function[..., Any]:
        return self._owner._method_function(self._name)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method here (enter hooks run once per local instance)."""
        return self._owner._entry().__call__(*args, **self._extra, **kwargs)

    @aio_method
    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function().remote(*args, **self._extra, **kwargs)

    @remote.native
    async def _remote_aio(self, *args: Any, **kwargs: Any) -> Any:
        return await self._function().remote.aio(*args, **self._extra, **kwargs)

    @aio_iterator
    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._function().remote_gen(*args, **self._extra, **kwargs)

    @aio_method
    def spawn(self, *args: Any, **kwargs: Any) -> FunctionCall[Any]:
        return self._function().spawn(*args, **self._extra, **kwargs)

    @spawn.native
    async def _spawn_aio(self, *args: Any, **kwargs: Any) -> FunctionCall[Any]:
        return await self._function().spawn.aio(*args, **self._extra, **kwargs)

    @aio_iterator
    def map(self, *inputs: Iterable[Any], kwargs: dict[str, Any] | None = None, **options: Any) -> Iterator[Any]:
        return self._function().map(*inputs, kwargs={**self._extra, **(kwargs or {})}, **options)

    @aio_iterator
    def starmap(
        self, inputs: Iterable[tuple[Any, ...]], *, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        return self._function().starmap(inputs, kwargs={**self._extra, **(kwargs or {})}, **options)

    @aio_method
    def for_each(self, *inputs: Iterable[Any], kwargs: dict[str, Any] | None = None, **options: Any) -> None:
        self._function().for_each(*inputs, kwargs={**self._extra, **(kwargs or {})}, **options)

    @aio_method
    def spawn_map(self, *inputs: Iterable[Any], kwargs: dict[str, Any] | None = None) -> None:
        self._function().spawn_map(*inputs, kwargs={**self._extra, **(kwargs or {})})


class _Obj:
    """``Model(size=3)``: a handle on the remote instances for one parameter set."""

    def __init__(self, owner: Cls, params: dict[str, Any]) -> None:
        self._owner, self._params = owner, params

    def __getattr__(self, name: str) -> _BoundMethod | Function[..., Any]:
        if name in self._owner._web_functions:
            return self._owner._web_functions[name]  # a web endpoint: .get_web_url()
        if name.startswith("_") or name not in self._owner._methods:
            known = ", ".join(sorted(self._owner._methods)) or "none"
            raise AttributeError(f"{self._owner._tag} has no @minimodal.method() {name!r} (methods: {known})")
        return _BoundMethod(self._owner, name, self._params)

    def __repr__(self) -> str:
        return f"{self._owner._tag}({', '.join(f'{k}={v!r}' for k, v in self._params.items())})"


class Cls:
    """What ``@app.cls()`` returns (and ``Cls.from_name``); call it with parameters to get an instance handle."""

    def __init__(
        self,
        function: Function[..., Any],
        methods: dict[str, bool],
        parameters: dict[str, Any],
        entry: ClsEntry | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._function = function
        self._tag = function._tag
        self._methods = methods  # name -> is a generator
        self._parameters = parameters
        self._entry_object = entry
        self._options = options or {}
        self._web_functions: dict[str, Function[..., Any]] = {}  # web endpoint methods, each its own function
        self._variant: FunctionVariant | None = None  # the class's function with these options, made on first use

    def __repr__(self) -> str:
        return f"Cls({self._tag!r})"

    def __call__(self, **params: Any) -> _Obj:
        unknown = sorted(set(params) - set(self._parameters))
        if unknown:
            raise InvalidError(
                f"{self._tag} has no parameter {', '.join(unknown)} (it has: {sorted(self._parameters)})"
            )
        missing = [n for n, d in self._parameters.items() if d == _REQUIRED and n not in params]
        if missing:
            raise InvalidError(f"{self._tag} needs the parameter(s) {', '.join(missing)}")
        return _Obj(self, params)

    def _entry(self) -> ClsEntry:
        if self._entry_object is None:
            raise InvalidError(f"{self._tag} was looked up by name: its code is on the server, call .remote()")
        return self._entry_object

    def _base_function(self) -> Function[..., Any]:
        if not self._options:
            return self._function
        if self._variant is None:
            self._variant = FunctionVariant(self._function, self._options)
        return self._variant

    def _method_function(self, name: str) -> Function[..., Any]:
        base = self._base_function()
        if not self._methods[name]:
            return base
        clone = Function(None, base._raw_f, base._tag, base._options)  # type: ignore[arg-type]
        clone.object_id, clone._is_generator = base._hydrated_id(), True
        return clone

    def with_options(self, **options: Any) -> Cls:
        """The same class with other resources, limits, volumes or secrets (as ``Function.with_options``)."""
        merged = {**self._options, **check_options(f"{self._tag}.with_options()", options)}
        return Cls(self._function, self._methods, self._parameters, self._entry_object, merged)

    @classmethod
    def from_name(cls, app_name: str, name: str, *, environment_name: str | None = None) -> Cls:
        """The class ``name`` of the deployed app ``app_name`` (its current version)."""
        from ._deploy import lookup_function

        function = lookup_function(app_name, name)
        spec = function._extra_spec.get("cls")
        if not spec:
            raise InvalidError(f"{app_name}/{name} is a function, not a class: use Function.from_name")
        return Cls(function, spec["methods"], spec["parameters"])


def _members(user_cls: type, attr: str) -> dict[str, Any]:
    """The class's members (base classes first) that carry ``attr``, by name."""
    found: dict[str, Any] = {}
    for klass in reversed(user_cls.__mro__):
        found.update({name: m for name, m in vars(klass).items() if hasattr(m, attr)})
    return found


def _web_methods(user_cls: type, tag: str, parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``@fastapi_endpoint``/``@asgi_app``/``@wsgi_app`` methods: remote without ``@method()``, as in Modal."""
    webs = {name: getattr(member, WEB_ATTR) for name, member in _members(user_cls, WEB_ATTR).items()}
    for name in webs:
        if getattr(getattr(user_cls, name), HOOK_ATTR, None) is not None:
            raise InvalidError(f"{tag}.{name}: a web endpoint method takes no @minimodal.method()/@enter()/@exit()")
    required = [name for name, default in parameters.items() if default == _REQUIRED]
    if webs and required:
        raise InvalidError(f"{tag} has web endpoints, so its parameters need defaults ({', '.join(required)})")
    return webs


def make_cls(
    app: App, user_cls: type, tag: str, decorator_for: Callable[[str], Callable[[Any], Function[..., Any]]]
) -> Cls:
    """Register ``user_cls`` on ``app`` and return its handle.

    The class is one function (``decorator_for(tag)``: ``@app.function`` with the class's options); each
    web endpoint method is one more, ``Class.method``, with the same options.
    """
    if not inspect.isclass(user_cls):
        raise TypeError("@app.cls() is for classes; decorate functions with @app.function()")
    parameters = _parameters(user_cls)
    for member in _members(user_cls, BATCHED_ATTR).values():
        if getattr(member, HOOK_ATTR, None) is None:
            setattr(member, HOOK_ATTR, "method")  # @batched alone makes a method remote, as in Modal
    webs = _web_methods(user_cls, tag, parameters)
    entry = ClsEntry(user_cls, parameters)
    methods = {
        name: inspect.isgeneratorfunction(getattr(user_cls, name))
        or inspect.isasyncgenfunction(getattr(user_cls, name))
        for name in entry.hooks("method")
    }
    if not methods and not webs:
        raise InvalidError(f"{tag} has no @minimodal.method(): mark the methods to call remotely")
    if parameters and "__init__" in vars(user_cls):
        raise InvalidError(f"{tag} declares minimodal.parameter() fields: it cannot define __init__ too")
    for name, default in parameters.items():
        # The class travels to containers that have no minimodal: no _Parameter objects left on it.
        if default == _REQUIRED:
            if name in vars(user_cls):
                delattr(user_cls, name)
        else:
            setattr(user_cls, name, default)
    function = decorator_for(tag)(entry)
    function._extra_spec["cls"] = {"methods": methods, "parameters": parameters}
    if not methods:  # web endpoints only: no warm runner for a function nobody calls
        function._options = dataclasses.replace(function._options, min_containers=None, buffer_containers=None)
    handle = Cls(function, methods, parameters, entry)
    for name, web in webs.items():
        served = MethodWebEntry(entry, name, dict(web))
        if hasattr(user_cls, CONCURRENT_ATTR):
            setattr(served, CONCURRENT_ATTR, getattr(user_cls, CONCURRENT_ATTR))  # @concurrent on the class
        handle._web_functions[name] = decorator_for(f"{tag}.{name}")(served)
    return handle
