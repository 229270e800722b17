"""The dev loop: ephemeral web endpoints, serve with hot reload, run --detach, cancellation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

import minimodal
from minimodal.exception import InputCancelledError
from tests.conftest import ROOT, Stack, wait_for
from tests.functions import devloop


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _call(stack: Stack, token: str, call_id: str) -> dict:
    reply = requests.get(f"{stack.url}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_an_ephemeral_app_serves_its_web_endpoints_until_it_stops(user: str) -> None:
    with devloop.app.run():
        url = devloop.hello.get_web_url()
        assert url and devloop.app.app_id in url
        reply = requests.get(url, params={"name": "dev"}, timeout=60)
        assert reply.status_code == 200 and reply.json() == {"hello": "dev"}
    assert requests.get(url, timeout=30).status_code == 404


def test_function_call_cancel_ends_its_inputs_cancelled(stack: Stack, user: str) -> None:
    with devloop.app.run():
        fc = devloop.slow.spawn(30)
        time.sleep(0.5)
        fc.cancel()
        with pytest.raises(InputCancelledError):
            fc.get(timeout=10)
        call = _call(stack, user, fc.object_id)
        assert call["statuses"] == {"cancelled": 1} and call["done"]
        assert devloop.slow.remote(0.1) == 0.1  # the app goes on


def test_cancelling_an_input_whose_output_is_published_keeps_its_output_and_its_status(stack: Stack, user: str) -> None:
    """The end of an app can come between an input's output and its recorder's write (a loaded worker): the
    output that was published stands, and the database ends with it, never with ``cancelled``."""
    import cloudpickle

    from minimodal import protocol
    from mm_app.payloads import Payloads

    with devloop.app.run():
        fc = devloop.slow.spawn(4)
        wait_for(lambda: _call(stack, user, fc.object_id)["statuses"] == {"running": 1}, 30, "the input running")
        # What a worker does first when the input ends: publish its output (its recorder writes later).
        Payloads(stack.redis.client, ttl=60).put_output(
            fc.object_id,
            {
                protocol.OUT_INDEX: 0,
                protocol.OUT_STATUS: "completed",
                protocol.OUT_DATA: cloudpickle.dumps("published"),
            },
        )
        fc.cancel()
        assert _call(stack, user, fc.object_id)["statuses"] == {"running": 1}  # not cancelled: it has ended
    assert fc.get(timeout=10) == "published"
    wait_for(lambda: _call(stack, user, fc.object_id)["statuses"] == {"completed": 1}, 30, "the recorder's write")


def test_without_detach_the_end_of_the_run_cancels_what_it_left(stack: Stack, user: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "minimodal", "run", "tests/functions/devloop.py::spawn_and_leave", "--seconds", "20"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    call_id = done.stdout.split("SPAWNED", 1)[1].split()[0]
    wait_for(
        lambda: _call(stack, user, call_id)["statuses"] == {"cancelled": 1}, 30, "the spawned call to be cancelled"
    )


def test_ctrl_c_stops_the_app_and_cancels_its_calls(stack: Stack, user: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "minimodal", "run", "tests/functions/devloop.py::spawn_and_wait"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = ""
        while "SPAWNED" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read() if process.stderr else ""
        call_id = line.split()[1]
        process.send_signal(signal.SIGINT)
        # It ends (130, or 0 when the interrupt lands as the entrypoint returns); the app's stop comes first.
        assert process.wait(timeout=150) in (0, 130)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)  # closes the pipes
    wait_for(lambda: _call(stack, user, call_id)["statuses"] == {"cancelled": 1}, 30, "the call to be cancelled")


def test_run_detach_lets_spawned_calls_finish_after_the_cli_exits(stack: Stack, user: str) -> None:
    key = f"detached-{time.time_ns()}"
    started = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "minimodal",
            "run",
            "--detach",
            "tests/functions/devloop.py::spawn_and_leave",
            "--key",
            key,
            "--seconds",
            "3",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    exited = time.time()
    assert done.returncode == 0, done.stderr
    assert "detached:" in done.stderr
    marks = minimodal.Dict.from_name("devloop-marks", create_if_missing=True)
    wait_for(lambda: key in marks, 60, "the detached call to finish")
    assert marks[key] > exited > started  # it finished after the CLI had exited
    app_id = done.stderr.split("detached: ", 1)[1].split()[0]
    stop = subprocess.run(
        [sys.executable, "-m", "minimodal", "app", "stop", app_id], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert stop.returncode == 0, stop.stderr


def test_serve_reloads_the_endpoint_within_seconds_of_a_save(user: str, tmp_path: Path) -> None:
    program = tmp_path / "served.py"
    body = textwrap.dedent(
        """
        import minimodal

        app = minimodal.App("served-{stamp}")

        @app.function()
        @minimodal.fastapi_endpoint()
        def page():
            return {"body": "VERSION"}
        """
    ).replace("{stamp}", str(time.time_ns()))
    program.write_text(body.replace("VERSION", "one"))
    process = subprocess.Popen(
        [sys.executable, "-m", "minimodal", "serve", str(program), "--timeout", "90"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = None
        lines: list[str] = []
        while True:
            line = process.stdout.readline()
            lines.append(line)
            assert line, "".join(lines)
            if "=> page" in line:
                url = line.rsplit(" ", 1)[1].strip()
            if "watching" in line:
                break
        assert url and url.endswith("-dev/page"), "".join(lines)
        assert requests.get(url, timeout=60).json() == {"body": "one"}
        program.write_text(body.replace("VERSION", "two"))
        saved = time.monotonic()
        wait_for(lambda: requests.get(url, timeout=10).json() == {"body": "two"}, 20, "the new version to answer")
        reload_seconds = time.monotonic() - saved
        print(f"serve reload: {reload_seconds:.2f} s")  # the figure for the note; not asserted
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=150)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
    assert "stopped" in output
    assert requests.get(url, timeout=30).status_code == 404  # Ctrl-C stopped the dev app


def test_the_runners_of_a_stopped_app_stop(user: str) -> None:
    with devloop.app.run():
        runner_pid = devloop.pid.remote()
        assert os.path.exists(f"/proc/{runner_pid}")
    # The app stopped at the end of the block: its warm runner goes within a heartbeat, not a scaledown window.
    wait_for(lambda: not os.path.exists(f"/proc/{runner_pid}"), 20, "the stopped app's runner to stop")
