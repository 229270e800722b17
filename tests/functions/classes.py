"""Classes the tests run remotely: an enter hook that counts, parameters, an exit hook that leaves a mark."""

from __future__ import annotations

import os
from pathlib import Path

import minimodal

app = minimodal.App("tests-classes")

ENTERED = 0  # per container: how many times an enter hook ran in this process


@app.cls(max_containers=1, scaledown_window=60)
class Counter:
    @minimodal.enter()
    def load(self) -> None:
        global ENTERED
        ENTERED += 1
        self.offset = 100

    @minimodal.method()
    def predict(self, x: int) -> tuple[int, int, int]:
        return x + self.offset, ENTERED, os.getpid()

    @minimodal.method()
    def upto(self, n: int):  # type: ignore[no-untyped-def]
        yield from range(n)


@app.cls(scaledown_window=2)
class Model:
    size: int = minimodal.parameter(default=1)
    mark_dir: str = minimodal.parameter(default="")

    @minimodal.enter()
    def load(self) -> None:
        self.weights = [self.size] * 3

    @minimodal.method()
    def predict(self, x: int) -> int:
        return sum(self.weights) * x

    @minimodal.method()
    def timeout_option(self) -> int:
        return int(os.environ.get("MINIMODAL_IS_REMOTE", "0"))

    @minimodal.exit()
    def leave_a_mark(self) -> None:
        if self.mark_dir:
            Path(self.mark_dir, f"exit-{self.size}").write_text(str(os.getpid()))


@app.function()
def plain() -> str:
    return "plain"
