"""Input concurrency and dynamic batching: ``@minimodal.concurrent`` and ``@minimodal.batched``.

Example::

    @app.function(max_containers=1)
    @minimodal.concurrent(max_inputs=8)  # one container runs up to 8 inputs at once
    def fetch(url: str) -> int: ...

    @app.function()
    @minimodal.batched(max_batch_size=16, wait_ms=100)
    def embed(texts: list[str]) -> list[list[float]]: ...  # callers pass one text, get one vector

``concurrent`` goes on a function or on a class (``@app.cls``), never on a method: a sync function's
inputs run in threads of the runner, an async one's as tasks on the runner's event loop. ``batched``
goes on a function or on the one method of a class; the function receives one list per parameter and
returns a list of the same length. Both are decorators stacked *under* ``@app.function``/``@app.cls``.
They become the function's options ``concurrent_inputs`` and ``batch_max_size``/``batch_wait_ms``,
which the workers act on (workers/runtimes/shared.py, sdk/minimodal/_runner.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .exception import InvalidError

T = TypeVar("T")
CONCURRENT_ATTR = "_minimodal_concurrent"  # {"max_inputs": N, "target_inputs": M}
BATCHED_ATTR = "_minimodal_batched"  # {"max_batch_size": N, "wait_ms": M}
MAX_INPUTS = 1000  # the most inputs one runner takes at once
MAX_BATCH_SIZE = 1000
MAX_WAIT_MS = 600_000


def _whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidError(f"{name}={value!r}: give a whole number from {low} to {high}")
    return value


def _not_a_function_yet(where: str, target: Any) -> None:
    if hasattr(target, "_tag") and hasattr(target, "object_id"):
        raise InvalidError(f"put @minimodal.{where}(...) below @app.function()/@app.cls(), not above it")


def concurrent(
    _warn_parentheses_missing: Any = None, *, max_inputs: int | None = None, target_inputs: int | None = None
) -> Callable[[T], T]:
    """Let one container take up to ``max_inputs`` inputs at once (``target_inputs`` is accepted, unused)."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @minimodal.concurrent(max_inputs=N) with parentheses")
    if max_inputs is None:
        raise InvalidError("@minimodal.concurrent needs max_inputs=N")
    _whole("max_inputs", max_inputs, 1, MAX_INPUTS)
    if target_inputs is not None and _whole("target_inputs", target_inputs, 1, MAX_INPUTS) > max_inputs:
        raise InvalidError(f"target_inputs={target_inputs} is more than max_inputs={max_inputs}")

    def decorate(target: T) -> T:
        _not_a_function_yet("concurrent", target)
        if not callable(target):
            raise InvalidError("@minimodal.concurrent goes on a function or a class")
        setattr(target, CONCURRENT_ATTR, {"max_inputs": max_inputs, "target_inputs": target_inputs})
        return target

    return decorate


def batched(_warn_parentheses_missing: Any = None, *, max_batch_size: int, wait_ms: int) -> Callable[[T], T]:
    """Group inputs into one call: the function gets one list per parameter and returns a list as long."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @minimodal.batched(max_batch_size=N, wait_ms=M) with parentheses")
    _whole("max_batch_size", max_batch_size, 1, MAX_BATCH_SIZE)
    _whole("wait_ms", wait_ms, 0, MAX_WAIT_MS)

    def decorate(target: T) -> T:
        _not_a_function_yet("batched", target)
        if inspect.isclass(target) or not callable(target):
            raise InvalidError("@minimodal.batched goes on a function or on a method, not on a class")
        if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
            raise InvalidError(f"{target.__qualname__}: a batched function cannot be a generator")  # type: ignore[attr-defined]
        defaults = [
            p.name for p in inspect.signature(target).parameters.values() if p.default is not inspect.Parameter.empty
        ]
        if defaults:
            raise InvalidError(
                f"{target.__qualname__}: a batched function cannot have default arguments ({', '.join(defaults)})"  # type: ignore[attr-defined]
            )
        setattr(target, BATCHED_ATTR, {"max_batch_size": max_batch_size, "wait_ms": wait_ms})
        return target

    return decorate


def options_of(target: Any, tag: str, *, methods: dict[str, Any] | None = None) -> dict[str, int]:
    """The worker options the decorators on ``target`` ask for (``methods``: a class's methods by name)."""
    options: dict[str, int] = {}
    spec = getattr(target, CONCURRENT_ATTR, None)
    if spec:
        options["concurrent_inputs"] = spec["max_inputs"]
    methods = methods or {}
    batched_methods = {name: getattr(m, BATCHED_ATTR) for name, m in methods.items() if hasattr(m, BATCHED_ATTR)}
    for name, member in methods.items():
        if hasattr(member, CONCURRENT_ATTR) and not inspect.isclass(member):
            raise InvalidError(f"{tag}.{name}: @minimodal.concurrent goes on the class, not on a method")
    batch = getattr(target, BATCHED_ATTR, None)
    if batched_methods:
        if len(methods) > 1:
            raise InvalidError(f"{tag}: a class with a @minimodal.batched method can have no other method")
        batch = next(iter(batched_methods.values()))
    if batch:
        if spec:
            raise InvalidError(f"{tag}: @minimodal.batched and @minimodal.concurrent cannot be combined")
        options["batch_max_size"] = batch["max_batch_size"]
        options["batch_wait_ms"] = batch["wait_ms"]
    return options


def options_of_function(raw_f: Any, tag: str) -> dict[str, int]:
    """:func:`options_of` for what ``@app.function`` wraps: a function, or a class's entry (``@app.cls``)."""
    from ._clsentry import ClsEntry

    if isinstance(raw_f, ClsEntry):
        user_cls = raw_f.user_cls
        return options_of(user_cls, tag, methods={name: getattr(user_cls, name) for name in raw_f.hooks("method")})
    return options_of(raw_f, tag)
