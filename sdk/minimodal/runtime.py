"""What a function can ask about where it runs."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator


def is_local() -> bool:
    """False inside a MiniModal runner, True everywhere else."""
    return os.environ.get("MINIMODAL_IS_REMOTE") != "1"


def current_function_call_id() -> str | None:
    """The ``fc-...`` id of the call being run, or None outside a runner."""
    return None if is_local() else os.environ.get("MINIMODAL_FUNCTION_CALL_ID") or None


def current_input_id() -> str | None:
    """An id for the input being run (``fc-...:index``), or None outside a runner."""
    call_id = current_function_call_id()
    return None if call_id is None else f"{call_id}:{os.environ.get('MINIMODAL_INPUT_INDEX', '0')}"


_output_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("minimodal_output", default=False)


def output_enabled() -> bool:
    return _output_enabled.get()


@contextlib.contextmanager
def enable_output(show_progress: bool = True) -> Iterator[None]:
    """Show image build logs (on stderr) while an app starts; ``minimodal run`` turns it on."""
    token = _output_enabled.set(True)
    try:
        yield
    finally:
        _output_enabled.reset(token)
