"""Deployed apps: persistent and versioned, called by name from another program, stopped by the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

import minimodal
from minimodal.exception import NotFoundError
from tests.conftest import ROOT, Stack
from tests.functions import deployed

MINIMODAL = [sys.executable, "-m", "minimodal"]


def _cli(stack: Stack, token: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "MINIMODAL_TOKEN": token}
    return subprocess.run([*MINIMODAL, *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_deployed_function_is_called_by_name_from_a_separate_process(stack: Stack, user: str) -> None:
    deployed.app.deploy()
    assert deployed.app.deployed_version == 1
    code = (
        "import minimodal\n"
        "f = minimodal.Function.from_name('tests-deployed', 'double')\n"
        "g = minimodal.Function.from_name('tests-deployed', 'count_up')\n"
        "print(f.remote(21), list(f.map([1, 2])), f.spawn(5).get(), list(g.remote_gen(3)))\n"
    )
    env = {**stack.env, "MINIMODAL_TOKEN": user}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42 [2, 4] 10 [0, 1, 2]"


def test_a_run_app_is_ephemeral_and_cannot_be_looked_up(user: str) -> None:
    with deployed.app.run():
        assert deployed.double.remote(1) == 2
        with pytest.raises(NotFoundError, match="no deployed app"):
            minimodal.Function.from_name("tests-deployed", "double")
    with pytest.raises(NotFoundError):
        minimodal.Function.from_name("tests-deployed", "nope")


def test_redeploy_replaces_the_version_and_calls_in_flight_finish_on_the_old_one(user: str) -> None:
    deployed.v1.deploy()
    in_flight = minimodal.Function.from_name("tests-versioned", "which").spawn(3.0)
    deployed.v2.deploy()
    assert deployed.v2.deployed_version == 2
    assert minimodal.Function.from_name("tests-versioned", "which").remote(0) == "v2"
    assert in_flight.get(timeout=60) == "v1"


def test_app_list_history_and_stop_on_the_command_line(stack: Stack, user: str) -> None:
    result = _cli(stack, user, "deploy", "tests/functions/deployed.py")
    assert result.returncode == 0, result.stderr
    assert "deployed tests-deployed version 1" in result.stdout
    assert minimodal.Function.from_name("tests-deployed", "double").remote(4) == 8
    listed = _cli(stack, user, "app", "list")
    assert "tests-deployed" in listed.stdout and "deployed" in listed.stdout
    history = _cli(stack, user, "app", "history", "tests-deployed")
    assert history.returncode == 0, history.stderr
    assert "      1  ap-" in history.stdout and "double" in history.stdout and "completed 1" in history.stdout
    stopped = _cli(stack, user, "app", "stop", "tests-deployed")
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(NotFoundError, match="no deployed app"):
        minimodal.Function.from_name("tests-deployed", "double")
    again = _cli(stack, user, "app", "stop", "no-such-app")
    assert again.returncode == 1 and "NotFoundError" in again.stderr
