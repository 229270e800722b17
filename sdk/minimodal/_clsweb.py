"""A web endpoint on a method of a class (``@fastapi_endpoint``, ``@asgi_app``, ``@wsgi_app`` under ``@app.cls``).

Standard library only and pickled by value, like ``_clsentry`` and ``_webentry``. The method is served
by a function of its own (tag ``Class.method``) whose container holds one instance of the class with
its default parameters: its ``@enter`` hooks run there once, before the first request.
"""

from __future__ import annotations

from typing import Any

from ._clsentry import ClsEntry
from ._webentry import WebEntry


class MethodWebEntry(WebEntry):
    """Serves ``method`` of the container's instance of the class, as the plain web entry serves a function."""

    def __init__(self, entry: ClsEntry, method: str, web: dict[str, Any]) -> None:
        super().__init__(getattr(entry.user_cls, method), web)
        self.entry = entry
        self.method = method

    def _build(self) -> Any:
        if self._app is None:
            self.user_fn = getattr(self.entry.instance({}), self.method)  # bound: FastAPI sees no `self`
        return super()._build()
