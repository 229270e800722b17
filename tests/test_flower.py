"""Celery's own tools on a real stack: Flower shows ``mm.execute`` tasks by call id, ``celery inspect`` answers."""

from __future__ import annotations

import ast
import contextlib
import subprocess
import time
from typing import Any

import requests

from tests.conftest import PYTHON, ROOT, Stack, free_port, stop_process, wait_for
from tests.functions import basic

CELERY = [PYTHON, "-m", "celery", "-A", "mm_app.celery_app"]


def celery(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CELERY, *argv], env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def flower_task(base: str, call_id: str) -> dict[str, Any] | None:
    """The mm.execute task Flower recorded for ``call_id``, if any."""
    with contextlib.suppress(requests.RequestException):
        tasks = requests.get(f"{base}/api/tasks", params={"taskname": "mm.execute"}, timeout=5).json()
        for task_id, task in tasks.items():
            if call_id in str(task.get("args")):
                return {"uuid": task_id, **task}
    return None


def test_flower_shows_each_execute_task_by_name_with_its_call_id_in_readable_args(stack: Stack, user: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Flower 2 answers its HTTP API only with auth configured or this variable set; it listens on loopback only.
    flower = stack.spawn(
        "flower", "flower", extra_env={"MINIMODAL_FLOWER_PORT": str(port), "FLOWER_UNAUTHENTICATED_API": "true"}
    )
    try:
        wait_for(lambda: _answers(f"{base}/healthcheck"), 60, "Flower to answer")
        found = None
        deadline = time.monotonic() + 60
        with basic.app.run():
            # Task events start once Flower has broadcast enable_events (every 5 s): call until one is seen.
            while found is None and time.monotonic() < deadline:
                call = basic.square.spawn(7)
                assert call.get() == 49
                found = wait_for_or_none(lambda c=call.object_id: flower_task(base, c), 3)
        assert found is not None, f"Flower never showed an mm.execute task:\n{stack.log('flower')[-2000:]}"
        assert found["name"] == "mm.execute"
        # Events arrive one by one (received, started, succeeded): wait for the last.
        found = wait_for(
            lambda: (t := flower_task(base, call.object_id)) and t["state"] == "SUCCESS" and t, 10, "SUCCESS"
        )
        args = ast.literal_eval(found["args"])  # a repr of the JSON arguments, not pickled bytes
        assert args[0] == call.object_id and args[1].startswith("fu-") and args[3:] == [0, 1]
        assert found["worker"].startswith("mm-worker-")
        page = requests.get(f"{base}/task/{found['uuid']}", timeout=5)
        assert page.status_code == 200 and "mm.execute" in page.text and call.object_id in page.text
    finally:
        stop_process(flower)
        stack.processes.pop("flower", None)
        # Flower turned the worker's task events on; turn them off again for the tests that follow.
        celery(stack, "control", "disable_events")


def wait_for_or_none(predicate, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return None


def _answers(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(url, timeout=1).ok
    return False


def test_celery_inspect_active_lists_the_running_execute_task_with_its_call_id(stack: Stack, user: str) -> None:
    with basic.app.run():
        call = basic.sleep.spawn(4.0)
        runs = lambda: call.object_id in (r := celery(stack, "inspect", "active")).stdout and r  # noqa: E731
        result = wait_for(runs, 30, "celery inspect active to list the call", interval=0.3)
        assert result.returncode == 0, result.stderr
        assert "mm.execute" in result.stdout and "mm-worker-" in result.stdout
        assert call.get() == 4.0
    idle = celery(stack, "inspect", "active")
    assert idle.returncode == 0, idle.stderr
    assert call.object_id not in idle.stdout
