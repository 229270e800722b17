"""`minimodal up` runs every process under supervisord: a process that dies comes back and loses no call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, missing, wait_for
from tests.functions import basic

MINIMODAL = [sys.executable, "-m", "minimodal"]
NAMES = {"api", "dispatcher", "worker", "beat", "flower", "redis"}


@dataclass
class Supervised:
    home: Path
    env: dict[str, str]

    def status(self) -> tuple[int, dict[str, dict[str, str]]]:
        """`minimodal status`: its exit code and its table, name -> {state, pid, restarts}."""
        done = subprocess.run([*MINIMODAL, "status"], env=self.env, cwd=ROOT, capture_output=True, text=True)
        rows = {}
        for line in done.stdout.splitlines():
            cells = line.split()
            if cells and cells[0] in NAMES:
                rows[cells[0]] = {"state": cells[1], "pid": cells[2], "restarts": cells[3]}
        return done.returncode, rows

    def supervisorctl(self, *argv: str) -> str:
        conf = self.home / "run" / "supervisord.conf"
        command = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *argv]
        return subprocess.run(command, env=self.env, capture_output=True, text=True).stdout


def _leftovers(home: Path) -> str:
    return subprocess.run(["pgrep", "-af", str(home)], capture_output=True, text=True).stdout


def _stack_env(home: Path) -> dict[str, str]:
    if not any(os.access(Path(p) / "redis-server", os.X_OK) for p in os.environ.get("PATH", "").split(":")):
        missing("redis-server is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMODAL_")}
    env.update(
        {
            "MINIMODAL_HOME": str(home),
            "MINIMODAL_API_PORT": str(free_port()),
            "MINIMODAL_LOCAL_REDIS_PORT": str(free_port()),
            "MINIMODAL_FLOWER_PORT": str(free_port()),
            "MINIMODAL_WORKER_RUNTIME": "process",
            "MINIMODAL_WORKER_CONCURRENCY": "4",
            "MINIMODAL_API_PROCESSES": "2",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    home = tmp_path_factory.mktemp("supervised")
    env = _stack_env(home)
    up = subprocess.run([*MINIMODAL, "up", "--detach"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    stack = Supervised(home, env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield stack
    finally:
        down = subprocess.run([*MINIMODAL, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, down.stderr
        assert _leftovers(home) == "", "processes outlived `minimodal down`"
        assert not (home / "run" / "supervisord.pid").exists()


def test_status_lists_every_process_running_with_its_pid_and_no_restarts(supervised: Supervised) -> None:
    code, rows = supervised.status()
    assert code == 0
    assert set(rows) == NAMES
    for name, row in rows.items():
        assert row["state"] == "RUNNING", name
        assert int(row["pid"]) > 0
        assert row["restarts"] == "0"


@pytest.mark.timeout(300)
def test_a_sigkilled_worker_and_dispatcher_come_back_during_a_map_and_every_result_arrives(
    supervised: Supervised, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a map of 100 inputs running on the supervised stack (the SDK reads the profile `up` wrote)...
    for key in ("MINIMODAL_TOKEN", "MINIMODAL_SERVER_URL", "MINIMODAL_MAX_PAYLOAD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MINIMODAL_HOME", str(supervised.home))
    _, before = supervised.status()
    results = []
    with basic.app.run():
        for result in basic.sleep.map([0.1] * 100):
            results.append(result)
            # ...when the worker, then the dispatcher, is killed with SIGKILL mid-way...
            if len(results) == 10:
                os.kill(int(before["worker"]["pid"]), signal.SIGKILL)
            if len(results) == 20:
                os.kill(int(before["dispatcher"]["pid"]), signal.SIGKILL)
    # ...then every input's result arrives, and supervisord started each again (a new pid, one restart).
    assert results == [0.1] * 100

    def restarted() -> dict[str, dict[str, str]] | None:
        code, rows = supervised.status()
        return rows if code == 0 else None

    rows = wait_for(restarted, 30, "every process RUNNING again")
    for name in ("worker", "dispatcher"):
        assert rows[name]["pid"] != before[name]["pid"]
        assert rows[name]["restarts"] == "1"
    log = (supervised.home / "logs" / "supervisord.log").read_text()
    assert "exited: worker (terminated by SIGKILL; not expected)" in log
    assert "exited: dispatcher (terminated by SIGKILL; not expected)" in log


def test_status_exits_non_zero_while_a_process_is_down(supervised: Supervised) -> None:
    supervised.supervisorctl("stop", "stack:flower")
    try:
        code, rows = supervised.status()
        assert code == 1
        assert rows["flower"]["state"] == "STOPPED"
        assert rows["api"]["state"] == "RUNNING"
    finally:
        supervised.supervisorctl("start", "stack:flower")
    assert supervised.status()[0] == 0


@pytest.mark.timeout(300)
def test_a_foreground_up_restarts_a_killed_api_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    # Given `minimodal up` in the foreground...
    home = tmp_path / "home"
    stack = Supervised(home, _stack_env(home))
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen([*MINIMODAL, "up"], env=stack.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"MiniModal is up" in (tmp_path / "up.log").read_bytes(), 240, "the stack to come up")
        api = int(stack.status()[1]["api"]["pid"])
        # ...when its API (gunicorn's master) is killed, supervisord starts it again...
        os.kill(api, signal.SIGKILL)
        rows = wait_for(lambda: (r := stack.status())[0] == 0 and r[1], 60, "the API RUNNING again")
        assert int(rows["api"]["pid"]) != api and rows["api"]["restarts"] == "1"
        # ...and SIGTERM to `minimodal up` stops the stack: no process of it is left.
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=180) == 0
    finally:
        if up.poll() is None:
            up.kill()
            subprocess.run([*MINIMODAL, "down"], env=stack.env, cwd=ROOT, capture_output=True, timeout=180)
    assert _leftovers(home) == ""
    assert stack.status()[0] == 1
