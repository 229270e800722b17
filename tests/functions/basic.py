"""Functions the tests run remotely. They live in an importable module, shipped by value."""

from __future__ import annotations

import os
import time

import minimodal

app = minimodal.App("tests-basic")


class CustomError(Exception):
    """A user-defined exception type that must come back as itself."""


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = lambda: None  # a lambda attribute defeats plain pickling? cloudpickle handles it
        import threading

        self.lock = threading.Lock()  # a lock cannot be pickled by anyone


@app.function(cpu=1, memory=256, timeout=60)
def square(x: int) -> int:
    return x * x


@app.function()
def add(a: int, b: int = 0) -> int:
    return a + b


@app.function()
def echo(value: object) -> object:
    return value


@app.function()
def raise_value_error(message: str) -> None:
    raise ValueError(message)


@app.function()
def raise_custom(message: str) -> None:
    raise CustomError(message)


@app.function()
def raise_unpicklable(message: str) -> None:
    raise UnpicklableError(message)


@app.function()
def exit_hard(code: int) -> None:
    os._exit(code)


@app.function()
def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


@app.function()
def pid() -> int:
    return os.getpid()


@app.function()
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(timeout=1)
def sleep_past_timeout(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function()
def big(n: int) -> bytes:
    return b"x" * n


@app.function()
def is_remote() -> tuple[bool, str | None]:
    return minimodal.is_local(), minimodal.current_function_call_id()


@app.function()
def pid_with(_argument: object) -> int:
    return os.getpid()
