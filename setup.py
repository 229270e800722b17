"""Build hooks that pyproject.toml cannot declare: a ``.pth`` file at the root of site-packages.

``minimodal_as_modal.pth`` runs at every interpreter start and does nothing unless
``MINIMODAL_AS_MODAL=1``; then ``import modal`` gives MiniModal (``sdk/minimodal/_modal_alias.py``). A normal
install gets it from ``build_py`` (the build folder's root is the wheel's root); an editable install
(``pip install -e .``, PEP 660) from ``editable_wheel``, which otherwise writes only its own ``.pth``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "minimodal_as_modal.pth"
PTH_TEXT = (
    'import os; os.environ.get("MINIMODAL_AS_MODAL") == "1" and '
    '__import__("minimodal._modal_alias", fromlist=["install"]).install()\n'
)


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH_NAME).write_text(PTH_TEXT)


class _StrategyWithPth:
    """Setuptools' editable strategy, plus the ``.pth`` file in the same wheel."""

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    def __enter__(self) -> _StrategyWithPth:
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.strategy.__exit__(*exc)

    def __call__(self, wheel: Any, files: list[str], mapping: dict[str, str]) -> None:
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_TEXT)


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, *args: Any, **kwargs: Any) -> Any:
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
