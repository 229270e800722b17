"""Output that reads right (issue 17): whole lines, every call of the app shown live, progress bars."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid

import pytest

import minimodal
from mm_app.tasks.lines import LineBuffer, split_lines
from tests.conftest import ROOT, Stack, wait_for
from tests.functions import output


class _Recorder:
    """A stand-in for sys.stdout that keeps every write apart (so a torn line shows)."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def text(self) -> str:
        with self.lock:
            return "".join(self.writes)


def test_a_line_ends_at_a_newline_or_a_carriage_return_and_a_final_carriage_return_waits() -> None:
    assert split_lines("a\nb\r\nc\rd") == (["a\n", "b\r\n", "c\r"], "d")
    assert split_lines("bar 10%\r") == ([], "bar 10%\r")  # "\n" may follow: "\r\n" is one end
    assert split_lines("") == ([], "")


def test_the_line_buffer_hands_on_whole_lines_per_stream_and_the_rest_after_a_delay() -> None:
    got: list[tuple[str, str]] = []
    buffer = LineBuffer(got.extend, max_partial=1000, delay=0.05)
    buffer.write("stdout", "hello")
    buffer.write("stderr", "oops\n")
    buffer.write("stdout", " 1")
    buffer.write("stdout", "\n")
    assert got == [("stderr", "oops\n"), ("stdout", "hello 1\n")]
    buffer.write("stdout", "prompt> ")
    wait_for(lambda: ("stdout", "prompt> ") in got, 5, "the partial line to be flushed")
    buffer.write("stdout", "x" * 1500)  # past max_partial: goes as it is
    assert got[-1] == ("stdout", "x" * 1500)
    buffer.write("stdout", "last")
    buffer.close()
    assert got[-1] == ("stdout", "last")


def test_two_hundred_concurrent_prints_reach_the_client_as_two_hundred_whole_lines(user: str) -> None:
    out = _Recorder()
    with minimodal.enable_output(), output.app.run(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        assert sorted(output.hello.map(range(200))) == list(range(200))
    lines = [w for w in out.writes if w.startswith("hello")]
    assert all(re.fullmatch(r"hello \d+\n", w) for w in out.writes if not w.startswith("\x1b")), out.writes[:20]
    assert sorted(lines) == sorted(f"hello {i}\n" for i in range(200))  # each once: call and app stream agree


def test_a_progress_bar_drawn_with_carriage_returns_renders_live_in_a_spawned_call(user: str) -> None:
    name = f"go-{uuid.uuid4().hex[:8]}"
    go = minimodal.Queue.from_name(name, create_if_missing=True).hydrate()
    out = _Recorder()
    with minimodal.enable_output(), pytest.MonkeyPatch.context() as patch, output.app.run():
        patch.setattr(sys, "stdout", out)
        fc = output.bar.spawn(name)  # nothing reads this call's own stream: the app's log stream shows it
        wait_for(lambda: "progress 50%" in out.text(), 30, "the half-drawn bar while the call runs")
        go.put("go")
        assert fc.get(timeout=60) == "drawn"
    assert out.text() == "\rprogress 50%\rprogress 100%\n"  # no newline added after a "\r" line
    minimodal.Queue.delete(name)


def test_minimodal_run_shows_what_a_spawned_call_prints_while_the_app_runs(stack: Stack, user: str) -> None:
    name = f"go-{uuid.uuid4().hex[:8]}"
    go = minimodal.Queue.from_name(name, create_if_missing=True).hydrate()
    env = {**stack.env, "MINIMODAL_TOKEN": user}
    with subprocess.Popen(
        [sys.executable, "-m", "minimodal", "run", "tests/functions/output.py", "--queue", name],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as cli:
        assert cli.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while "spawned tick 0\n" not in seen and time.monotonic() < deadline:
            line = cli.stdout.readline()
            if not line:
                break
            seen.append(line)
        if "spawned tick 0\n" not in seen:
            cli.kill()
        assert "spawned tick 0\n" in seen, seen
        go.put("go")  # the spawned call was still waiting: its first line came live
        rest, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    lines = seen + rest.splitlines(keepends=True)
    assert [line for line in lines if "tick" in line or "done" in line] == [
        "spawned tick 0\n",
        "spawned tick 1\n",
        "entrypoint done\n",
    ]
    minimodal.Queue.delete(name)
