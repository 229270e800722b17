"""``import modal`` as MiniModal, so that a Modal program runs with no line changed.

:func:`install` puts a finder first on ``sys.meta_path`` that answers ``modal`` with the ``minimodal``
package itself and ``modal.X`` with ``minimodal.X``: ``sys.modules["modal"] is minimodal``, so
``isinstance`` checks, pickles and ``modal.exception.NotFoundError`` all agree with MiniModal's own
names. Modal modules that MiniModal spells otherwise are in ``RENAMED``; one it lacks is a
``ModuleNotFoundError`` that says so. ``minimodal`` is imported when the program first imports ``modal``.

Installed only when asked, never otherwise (a real ``modal`` package stays what ``import modal`` gives):

- by ``minimodal run`` and ``minimodal deploy`` before they import the app's file, even when a real
  ``modal`` is installed: those commands run the program on MiniModal;
- by the runner in every container and runner process (``sdk/_runner.py``);
- at interpreter start when ``MINIMODAL_AS_MODAL=1``, by the ``minimodal_as_modal.pth`` file the
  package puts in site-packages (``setup.py``): ``MINIMODAL_AS_MODAL=1 python prog.py``.

Standard library only, with no imports from the package, so the runner can load it by path before
(and without) importing ``minimodal``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

ENV_VAR = "MINIMODAL_AS_MODAL"
RENAMED = {
    "modal.partial_function": "minimodal.partial_function",  # the decorators: method, enter, batched, ...
    "modal.output": "minimodal.runtime",  # enable_output
}


class _Loader:  # duck-typed: importlib.abc costs a container ~0.1 s to import, for nothing
    """Puts the MiniModal module in ``sys.modules`` in place of the one being imported."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder, replaced below: importlib then returns what sys.modules holds

    def exec_module(self, module: ModuleType) -> None:
        sys.modules[module.__name__] = self.module


class ModalFinder:
    """Finds ``modal`` and ``modal.*`` as MiniModal's modules."""

    minimodal_modal_alias = True  # how install() recognises one, whichever copy of this file made it

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "modal" and not fullname.startswith("modal."):
            return None
        name = RENAMED.get(fullname, "minimodal" + fullname[len("modal") :])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: this program runs on MiniModal (`import modal` is minimodal), "
                f"which has no {name}",
                name=fullname,
            ) from None
        loader: Any = _Loader(module)  # duck-typed (see _Loader)
        return importlib.machinery.ModuleSpec(fullname, loader, is_package=hasattr(module, "__path__"))


def install() -> None:
    """From now on, in this interpreter, ``import modal`` gives MiniModal (once; calling again does nothing)."""
    if not any(getattr(finder, "minimodal_modal_alias", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, ModalFinder())
