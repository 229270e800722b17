"""Inside the container: import the app's module by name and hand the runner the function it asked for.

The runner (``minimodal._runner``) extracts the app's shipped source onto ``sys.path`` and calls
:func:`load_function` with the ``F`` frame. The module's top level runs here as it does locally (with
:func:`minimodal.is_local` false, so ``image.imports()`` blocks import for real, and under its own name,
so ``if __name__ == "__main__":`` does not run); then every function of the app is hydrated with the id
the server gave it, so that functions call each other with ``.remote()``, ``.spawn()``, ``.map()``.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any

from .app import App, live_apps
from .exception import InvalidError


def _find_app(name: str | None, tag: str, qualname: str | None) -> App:
    apps = [app for app in live_apps() if tag in app._functions]
    named = [app for app in apps if app.name == name] or apps
    same = [app for app in named if getattr(app._functions[tag]._raw_f, "__qualname__", None) == qualname]
    if same or named:
        return (same or named)[-1]
    raise InvalidError(f"the app's module defines no function {tag!r} when imported in the container")


def hydrate(app: App, described: dict[str, Any]) -> None:
    """Give every function of the app the id the server holds for it (``F`` header ``app``)."""
    app.app_id = described.get("app_id")
    for tag, function_id in (described.get("functions") or {}).items():
        function = app._functions.get(tag)
        if function is not None:
            function.object_id = function_id


def load_function(header: dict[str, Any], code: bytes) -> Any:
    """The callable the runner runs: the function (or class entry, or web handler) of the app, by tag."""
    ref = pickle.loads(code)  # a plain dict of strings: {module, app, tag, files}
    if not isinstance(ref, dict) or ref.get("minimodal_ref") != 1:
        raise InvalidError("the function's code is not a reference into its module")
    importlib.import_module(ref["module"])
    app = _find_app(ref.get("app"), ref["tag"], ref.get("qualname"))
    hydrate(app, header.get("app") or {})
    return app._functions[ref["tag"]]._raw_f
