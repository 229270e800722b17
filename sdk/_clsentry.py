"""What a class decorated with ``@app.cls()`` becomes in its container: one callable for the runner.

Standard library only, and pickled by value (the container has no ``minimodal`` package): the runner
loads this object once per container, so its instance cache lives as long as the container. The
first call with a given set of parameters builds the instance, sets its parameters, runs its
``@enter`` hooks and registers its ``@exit`` hooks to run when the runner exits; later calls reuse it.
"""

from __future__ import annotations

import atexit
import json
import threading
from typing import Any

METHOD_KEY = "__mm_method__"  # reserved keyword arguments: which method, with which parameters
PARAMS_KEY = "__mm_params__"
HOOK_ATTR = "_minimodal_hook"  # "enter" | "exit" | "method", set by the decorators
_REQUIRED = "__mm_required__"  # a parameter() without a default


class ClsEntry:
    """Calls ``method`` on the container's instance of the user's class for ``params``."""

    def __init__(self, user_cls: type[Any], parameters: dict[str, Any]) -> None:
        self.user_cls = user_cls
        self.parameters = parameters  # name -> default (or _REQUIRED)
        self.__name__ = user_cls.__name__
        self.__qualname__ = user_cls.__qualname__
        self.__module__ = user_cls.__module__
        self.__doc__ = user_cls.__doc__
        self._instances: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_instances": {}}
        state.pop("_lock", None)  # made again where it runs (a lock does not pickle)
        return state

    def hooks(self, kind: str) -> list[str]:
        """Names of the class's members marked ``kind``, in definition order (base classes first)."""
        names: list[str] = []
        for klass in reversed(self.user_cls.__mro__):
            for name, member in vars(klass).items():
                if getattr(member, HOOK_ATTR, None) == kind and name not in names:
                    names.append(name)
        return names

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """The full parameter set: given values over defaults; unknown or missing ones raise TypeError."""
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise TypeError(
                f"{self.__qualname__} has no parameter {', '.join(unknown)} (it has: {sorted(self.parameters)})"
            )
        full = {name: params.get(name, default) for name, default in self.parameters.items()}
        missing = [name for name, value in full.items() if value == _REQUIRED]
        if missing:
            raise TypeError(f"{self.__qualname__} needs the parameter(s) {', '.join(missing)}")
        return full

    def instance(self, params: dict[str, Any]) -> Any:
        full = self.resolve(params)
        key = json.dumps(full, sort_keys=True, default=repr)
        obj = self._instances.get(key)
        if obj is not None:
            return obj
        # Concurrent inputs (@minimodal.concurrent) may ask at once: one makes it and runs the enter hooks.
        with self.__dict__.setdefault("_lock", threading.Lock()):
            return self._make(key, full)

    def _make(self, key: str, full: dict[str, Any]) -> Any:
        obj = self._instances.get(key)
        if obj is None:
            if self.parameters:
                obj = self.user_cls.__new__(self.user_cls)  # type: ignore[call-overload]  # as unpickling does
                for name, value in full.items():
                    setattr(obj, name, value)
            else:
                obj = self.user_cls()
            for name in self.hooks("enter"):
                getattr(obj, name)()
            for name in reversed(self.hooks("exit")):
                atexit.register(getattr(obj, name))  # atexit runs last-registered first: definition order
            self._instances[key] = obj
        return obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        method = kwargs.pop(METHOD_KEY)
        params = kwargs.pop(PARAMS_KEY, {})
        return getattr(self.instance(params), method)(*args, **kwargs)
