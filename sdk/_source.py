"""The user's local source, shipped so that the app's module imports in the container under its own name.

A Modal program is a module that runs in the container too: its top level runs there (``image.imports()``
blocks included), and each function is found on the app by its tag, so functions see the module's other
functions, classes and globals as they are in the file. :func:`source_of` finds what must travel for a
function: the file of its module and, when that module belongs to a local package (not installed), every
Python file of the package; then, the same for each other local module the shipped ones refer to at top
level (an ``import helpers`` of a sibling file). Files are content-addressed: the client uploads only those
the server lacks, and a deploy pins them (``mm_app/api/apps.py``).

Where importing cannot work (a function of a notebook or an interactive interpreter, or ``serialized=True``)
the function is pickled by value instead, as in Modal.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .exception import InvalidError

MAX_SOURCE_BYTES = 32 * 1024 * 1024  # all shipped files of one app together
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_INSTALLED = tuple(
    str(Path(p).resolve())
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))
)


@dataclass
class Source:
    """What makes ``module`` importable in the container: files by path relative to a ``sys.path`` entry."""

    module: str  # the name it is imported under there (``hello_world``, ``pkg.mod``)
    files: dict[str, bytes] = field(default_factory=dict)

    def manifest(self) -> dict[str, str]:
        """``{relative path: sha256}``: what the function's spec carries (and its code hash covers)."""
        return {path: hashlib.sha256(data).hexdigest() for path, data in sorted(self.files.items())}


def _is_installed(path: str) -> bool:
    resolved = str(Path(path).resolve())
    return resolved.startswith(_INSTALLED) or "site-packages" in resolved or "dist-packages" in resolved


def _import_name(module: ModuleType) -> str | None:
    """The name the module is imported under in the container; None for code that has no file."""
    name = module.__name__
    if name in ("__main__", "__mp_main__"):
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            return str(spec.name)  # `python -m pkg.mod`
        path = getattr(module, "__file__", None)
        return Path(path).stem if path else None  # `python prog.py`: imported as `prog`, as Modal does
    return name


def _root_of(module: ModuleType, name: str) -> Path | None:
    """The ``sys.path`` entry the module was found on: its file's folder, up one per package level."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    folder = Path(path).resolve().parent
    depth = name.count(".") + (1 if Path(path).name == "__init__.py" else 0)
    for _ in range(depth):
        folder = folder.parent
    return folder


def _local(module: Any) -> bool:
    path = getattr(module, "__file__", None)
    name = getattr(module, "__name__", "")
    return path is not None and path.endswith(".py") and not _is_installed(path) and name.split(".")[0] != "minimodal"


def _package_files(root: Path, top: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for path in sorted((root / top).rglob("*.py")):
        relative = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        found[relative.as_posix()] = path.read_bytes()
    return found


def _files_of(module: ModuleType, name: str) -> tuple[str, dict[str, bytes]] | None:
    """``(top-level name, files)`` of one local module: its package's Python files, or its own file."""
    root = _root_of(module, name)
    if root is None:
        return None
    top = name.split(".")[0]
    if (root / top).is_dir():
        return top, _package_files(root, top)
    return top, {f"{top}.py": Path(module.__file__ or "").read_bytes()}


def _referenced_modules(module: ModuleType) -> list[ModuleType]:
    """Local modules the module's top level refers to: imported modules, and the homes of imported names."""
    found = []
    for value in list(vars(module).values()):
        target = value if isinstance(value, ModuleType) else sys.modules.get(getattr(value, "__module__", None) or "")
        if isinstance(target, ModuleType) and target is not module and _local(target):
            found.append(target)
    return found


def source_of(fn: Any) -> Source | None:
    """What must travel for ``fn``'s module to import in the container; None when it cannot be imported there."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None:
        return None
    name = _import_name(module)
    path = getattr(module, "__file__", None)
    if name is None or not path or not path.endswith(".py") or _is_installed(path):
        return None
    source = Source(name)
    tops: set[str] = set()
    todo: list[tuple[ModuleType, str]] = [(module, name)]
    while todo:
        current, current_name = todo.pop()
        shipped = _files_of(current, current_name)
        if shipped is None or shipped[0] in tops:
            continue
        tops.add(shipped[0])
        source.files.update(shipped[1])
        todo += [(m, m.__name__) for m in _referenced_modules(current)]
    total = sum(len(data) for data in source.files.values())
    if total > MAX_SOURCE_BYTES:
        raise InvalidError(
            f"the local source of {name} is {total:,} bytes, over {MAX_SOURCE_BYTES:,}: keep data files out of the "
            "package (use a Volume or Image.add_local_dir), or pass serialized=True"
        )
    return source
