"""What `minimodal run|deploy|serve|shell FILE[::NAME]` loads: the user's file (imported as Modal does), its target."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _modal_alias
from .app import App, LocalEntrypoint
from .exception import InvalidError
from .functions import Function


def import_file(path_text: str) -> ModuleType:
    """Import an app file as Modal does: under its stem with its folder on sys.path, or, for a file inside a
    package (folders with ``__init__.py``), as ``pkg.mod`` with the package's parent on sys.path. The same
    name is what the container imports (sdk/minimodal/_source.py)."""
    _modal_alias.install()  # a Modal program's `import modal` is MiniModal here, even if modal is installed
    if path_text.startswith("-m=") or (not path_text.endswith(".py") and "/" not in path_text and "." in path_text):
        name = path_text.removeprefix("-m=")
        sys.path.insert(0, os.getcwd())
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise InvalidError(f"cannot import the module {name}: {exc}") from None
    path = Path(path_text).resolve()
    if not path.is_file():
        raise InvalidError(f"no such file: {path_text}")
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    sys.path.insert(0, str(folder))
    name = ".".join(parts)
    if len(parts) > 1:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidError(f"cannot import {path_text}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pick_target(module: ModuleType, name: str | None) -> tuple[App, LocalEntrypoint | Function[Any, Any]]:
    """The app and the local entrypoint or function ``FILE::NAME`` names (without a name: the only one)."""
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if not apps:
        raise InvalidError(f"{module.__name__} defines no minimodal.App")
    candidates: list[tuple[App, str, LocalEntrypoint | Function[Any, Any]]] = []
    for app in apps:
        candidates += [(app, n, e) for n, e in app.registered_entrypoints.items()]
        if name is not None or not candidates:
            candidates += [(app, n, f) for n, f in app.registered_functions.items()]
    if name is not None:
        chosen = [c for c in candidates if c[1] == name]
        if not chosen:
            known = ", ".join(sorted({c[1] for c in candidates})) or "none"
            raise InvalidError(f"no local entrypoint or function named {name!r} (known: {known})")
    else:
        entrypoints = [c for c in candidates if isinstance(c[2], LocalEntrypoint)]
        chosen = entrypoints or candidates
        if len(chosen) != 1:
            known = ", ".join(c[1] for c in chosen)
            raise InvalidError(f"more than one thing to run ({known}): pick one with FILE::NAME")
    app, _, target = chosen[0]
    return app, target
