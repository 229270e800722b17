"""What the CLI shows people: app list, call show, progress bars on a terminal only."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack
from tests.functions import basic

MINIMODAL = [sys.executable, "-m", "minimodal"]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_app_list_shows_the_users_apps_and_their_functions(stack: Stack, user: str) -> None:
    with basic.app.run():
        app_id = basic.app.app_id
        basic.square.remote(2)
    listed = _run([*MINIMODAL, "app", "list"], {**stack.env, "MINIMODAL_TOKEN": user})
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith(app_id)]
    assert "tests-basic" in line and "stopped" in line and "square" in line


def test_call_show_gives_status_attempts_worker_and_error(stack: Stack, user: str) -> None:
    with basic.app.run():
        fc = basic.raise_value_error.spawn("shown in call show")
        with pytest.raises(ValueError):
            fc.get(timeout=30)
    time.sleep(0.3)  # the worker records statuses off the call's path
    shown = _run([*MINIMODAL, "call", "show", fc.object_id], {**stack.env, "MINIMODAL_TOKEN": user})
    assert shown.returncode == 0, shown.stderr
    assert f"{fc.object_id}  raise_value_error  1 input(s): failed 1" in shown.stdout
    assert "attempts=1" in shown.stdout and "worker=" in shown.stdout
    assert "error: ValueError('shown in call show')" in shown.stdout
    assert "attempt 1 of [0]: failed" in shown.stdout


MAP_APP = (
    "import minimodal\n"
    "app = minimodal.App('progress')\n"
    "@app.function()\n"
    "def square(x):\n"
    "    return x * x\n"
    "@app.local_entrypoint()\n"
    "def main():\n"
    "    print(sum(square.map(range(50))))\n"
)


def _run_on_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run under a pseudo-terminal, as a person at a terminal would; return what the terminal showed."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(main)
    return shown.decode("utf-8", "replace")


def test_a_map_shows_a_progress_bar_on_a_terminal_and_none_otherwise(stack: Stack, user: str, tmp_path: Path) -> None:
    app_file = tmp_path / "progress.py"
    app_file.write_text(MAP_APP)
    env = {**stack.env, "MINIMODAL_TOKEN": user, "COLUMNS": "100", "TERM": "xterm"}
    on_terminal = _run_on_a_terminal([*MINIMODAL, "run", str(app_file)], env)
    assert "40425" in on_terminal  # the sum of squares below 50
    assert "square.map" in on_terminal and "50/50" in on_terminal
    piped = _run([*MINIMODAL, "run", str(app_file)], env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip() == "40425"
    assert "square.map" not in piped.stdout + piped.stderr
