"""Pickling on the client side: functions and arguments out, results and exceptions back."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Any

import cloudpickle

from .exception import RemoteError, SerializationError

_INSTALLED_ROOTS = tuple(
    str(Path(p).resolve())
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))
)


def _is_local_module(module_name: str) -> bool:
    """True for the user's own code (not the standard library, not an installed package)."""
    if module_name in ("__main__", "__mp_main__"):
        return False  # cloudpickle already ships __main__ by value
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not path or module_name.split(".")[0] == "minimodal":
        return False
    resolved = str(Path(path).resolve())
    return not resolved.startswith(_INSTALLED_ROOTS)


def ship_local_modules_by_value(obj: Any) -> None:
    """Make cloudpickle send ``obj``'s module by value when it is the user's own, not an installed one.

    The whole top-level package is registered, so helpers in sibling modules travel too. This is
    what makes "edit a line, re-run" take effect with no rebuild and no code on the workers.
    """
    module_name = getattr(obj, "__module__", None)
    if not module_name or not _is_local_module(module_name):
        return
    top = module_name.split(".")[0]
    target = sys.modules.get(top) if top in sys.modules else sys.modules[module_name]
    if target is None or not _is_local_module(target.__name__):
        target = sys.modules[module_name]
    try:
        cloudpickle.register_pickle_by_value(target)
    except ValueError:
        pass  # already registered


def serialize_function(fn: Any) -> bytes:
    ship_local_modules_by_value(fn)
    try:
        return cloudpickle.dumps(fn)
    except Exception as exc:
        raise SerializationError(f"cannot pickle function {getattr(fn, '__qualname__', fn)!r}: {exc}") from exc


def serialize_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return cloudpickle.dumps((args, kwargs))
    except Exception as exc:
        raise SerializationError(f"cannot pickle the arguments: {exc}") from exc


def deserialize(data: bytes) -> Any:
    try:
        return cloudpickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"cannot unpickle a value from the remote side: {exc}; is the same package installed locally?"
        ) from exc


def rebuild_exception(data: bytes, traceback: str | None, description: str | None) -> BaseException:
    """The remote exception with its own type and the remote traceback attached as a note.

    An exception that was not pickled, or cannot be unpickled here, becomes a :class:`RemoteError`.
    """
    if data:
        try:
            exc = cloudpickle.loads(data)
        except Exception:  # noqa: BLE001 - fall through to RemoteError with the traceback
            exc = None
        if isinstance(exc, BaseException):
            if traceback:
                exc.add_note("\nRemote traceback:\n" + traceback.rstrip())
            exc.__dict__.setdefault("remote_traceback", traceback)
            return exc
    return RemoteError(description or "the remote function failed", traceback)
