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


@app.function()
def countdown(n: int, pause: float = 0.0):  # type: ignore[no-untyped-def]
    for i in range(n):
        if pause:
            time.sleep(pause)
        yield i


@app.function()
def fail_after(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)
    raise basic_error(f"failed after {n}")


def basic_error(message: str) -> Exception:
    return CustomError(message)


@app.function()
def stamped(n: int, pause: float):  # type: ignore[no-untyped-def]
    for i in range(n):
        time.sleep(pause)
        yield i, time.time()


@app.function()
def chatty(lines: int, pause: float) -> str:
    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    os.write(2, b"straight to fd 2\n")
    return "done"


@app.function()
async def async_square(x: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return x * x


@app.function()
async def async_countdown(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield i


@app.function()
def sleep_and_tag(seconds: float) -> tuple[float, float]:
    time.sleep(seconds)
    return seconds, time.time()


@app.function()
def fails_on_sevens(x: int) -> int:
    """Fails for every x that leaves 3 when divided by 7: failures among successes in one batched task."""
    if x % 7 == 3:
        raise ValueError(f"input {x}")
    return x
