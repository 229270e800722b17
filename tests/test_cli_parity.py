"""The everyday CLI a Modal user expects (issue 17): apps, dicts, queues, containers and a shell, with --json."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

import minimodal
from tests.conftest import ROOT, Stack, wait_for
from tests.functions import basic, shelly


def _cli(stack: Stack, token: str, *argv: str, code: int = 0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "minimodal", *argv],
        env={**stack.env, "MINIMODAL_TOKEN": token},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, (argv, done.stdout, done.stderr)
    return done.stdout if code == 0 else done.stderr


def test_dict_commands_list_show_clear_and_delete_a_dict(stack: Stack, user: str) -> None:
    name = f"cli-d-{uuid.uuid4().hex[:6]}"
    d = minimodal.Dict.from_name(name, create_if_missing=True)
    d.update({"a": 1, "b": [2, 3]})
    listed = json.loads(_cli(stack, user, "dict", "list", "--json"))
    assert {"name": name, "id": d.object_id, "len": 2} in listed
    assert name in _cli(stack, user, "dict", "list")
    assert sorted(json.loads(_cli(stack, user, "dict", "items", name, "--json"))) == [["a", 1], ["b", [2, 3]]]
    assert "'b'" in _cli(stack, user, "dict", "items", name)
    assert _cli(stack, user, "dict", "get", name, "b") == "[2, 3]\n"
    _cli(stack, user, "dict", "clear", name)
    assert d.len() == 0
    _cli(stack, user, "dict", "delete", name)
    assert name not in _cli(stack, user, "dict", "list")


def test_queue_commands_give_length_peek_clear_and_delete(stack: Stack, user: str) -> None:
    name = f"cli-q-{uuid.uuid4().hex[:6]}"
    q = minimodal.Queue.from_name(name, create_if_missing=True)
    q.put_many(["x", "y", "z"])
    assert {"name": name, "id": q.object_id, "len": 3} in json.loads(_cli(stack, user, "queue", "list", "--json"))
    assert _cli(stack, user, "queue", "len", name) == "3\n"
    assert json.loads(_cli(stack, user, "queue", "peek", name, "2", "--json")) == ["x", "y"]
    assert _cli(stack, user, "queue", "peek", name) == "'x'\n"
    assert q.len() == 3  # peeking takes nothing
    _cli(stack, user, "queue", "clear", name)
    assert q.len() == 0
    _cli(stack, user, "queue", "delete", name)
    assert name not in _cli(stack, user, "queue", "list")


def test_app_list_and_history_print_json(stack: Stack, user: str) -> None:
    with basic.app.run():
        app_id = basic.app.app_id
        apps = json.loads(_cli(stack, user, "app", "list", "--json"))
    assert [a for a in apps if a["app_id"] == app_id][0]["state"] == "ephemeral"
    error = _cli(stack, user, "app", "history", "no-such-app", "--json", code=1)
    assert len(error.strip().splitlines()) == 1 and "NotFoundError" in error


def test_a_failing_command_prints_one_line_and_no_traceback(stack: Stack, user: str) -> None:
    error = _cli(stack, user, "dict", "get", "no-such-dict", "k", code=1)
    assert error.count("\n") == 1 and "Traceback" not in error and "NotFoundError" in error
    error = _cli(stack, user, "container", "logs", "ct-nosuchthing", code=1)
    assert error.count("\n") == 1 and "no running container" in error


def test_container_commands_list_show_logs_exec_and_stop_a_running_container(stack: Stack, user: str) -> None:
    with basic.app.run():
        assert basic.chatty.remote(2, 0) == "done"  # its runner stays warm afterwards
        app_id = basic.app.app_id

        def mine() -> list[dict]:
            return [c for c in json.loads(_cli(stack, user, "container", "list", "--json")) if c["app"] == app_id]

        [container] = wait_for(mine, 30, "the warm runner in the container list")
        assert container["function"] == "chatty" and container["app_name"] == "tests-basic"
        assert container["id"].startswith("ct-") and container["started_at"] > 0
        assert container["id"] in _cli(stack, user, "container", "list")
        assert "line 0\nline 1\n" in _cli(stack, user, "container", "logs", container["id"])
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "minimodal",
                "container",
                "exec",
                container["id"],
                "--",
                "sh",
                "-c",
                "echo hi; exit 4",
            ],
            env={**stack.env, "MINIMODAL_TOKEN": user},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (out.returncode, out.stdout) == (4, "hi\n"), out.stderr
        _cli(stack, user, "container", "stop", container["id"])
        wait_for(lambda: not mine(), 30, "the stopped container to leave the list")
        assert basic.chatty.remote(1, 0) == "done"  # the next call starts a new runner


class _Terminal:
    """The CLI on a pseudo-terminal, as a user types into it (python's pty module)."""

    def __init__(self, stack: Stack, token: str, *argv: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(ROOT)
            os.execve(
                sys.executable, [sys.executable, "-m", "minimodal", *argv], {**stack.env, "MINIMODAL_TOKEN": token}
            )
        self.seen = b""

    def read_until(self, *markers: bytes, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any(m in self.seen for m in markers) and time.monotonic() < deadline:
            self._read(0.5)
        assert any(m in self.seen for m in markers), self.seen

    def _read(self, wait: float) -> None:
        with contextlib.suppress(OSError):  # EIO once the child has gone
            if select.select([self.fd], [], [], wait)[0]:
                self.seen += os.read(self.fd, 4096)

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def exit_code(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            self._read(0.2)
        raise AssertionError(f"the CLI did not end: {self.seen!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_shell_opens_an_interactive_shell_in_a_functions_container_through_a_pseudo_terminal(
    stack: Stack, user: str
) -> None:
    term = _Terminal(stack, user, "shell", "tests/functions/basic.py::square")
    try:
        term.read_until(b"$ ", b"# ")  # the remote shell's prompt
        term.type(b"echo $((6 * 7))-ok\n")
        term.read_until(b"42-ok")
        term.type(b"exit 3\n")
        assert term.exit_code() == 3, term.seen
    finally:
        term.close()
    wait_for(
        lambda: not json.loads(_cli(stack, user, "container", "list", "--json")), 30, "the shell's container to go"
    )


def test_container_exec_with_a_tty_is_interactive_and_gives_the_commands_exit_code(stack: Stack, user: str) -> None:
    with basic.app.run():
        assert basic.square.remote(3) == 9
        app_id = basic.app.app_id
        [container] = wait_for(
            lambda: [c for c in json.loads(_cli(stack, user, "container", "list", "--json")) if c["app"] == app_id],
            30,
            "the warm runner",
        )
        term = _Terminal(stack, user, "container", "exec", "-t", container["id"], "--", "/bin/sh")
        try:
            term.read_until(b"$ ", b"# ")
            term.type(b"read name; echo hello-$name\n")
            term.type(b"world\n")  # read by the remote `read`: stdin is interactive
            term.read_until(b"hello-world")
            term.type(b"exit 5\n")
            assert term.exit_code() == 5, term.seen
        finally:
            term.close()


@pytest.mark.docker
def test_shell_and_exec_reach_a_container_of_the_functions_image_with_its_volume_and_secrets(
    docker_stack: Stack, docker_user: str
) -> None:
    vol = minimodal.Volume.from_name("shell-vol", create_if_missing=True)
    with vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"hello from the volume\n"), "/hello.txt")
    term = _Terminal(docker_stack, docker_user, "shell", "tests/functions/shelly.py::probe")
    try:
        term.read_until(b"$ ", b"# ")
        term.type(b'cat /data/hello.txt; echo "[$SHELL_SECRET] uid=$(id -u)"\n')
        term.read_until(b"uid=1000")
        assert b"hello from the volume" in term.seen and b"[s3cret] uid=1000" in term.seen
        term.type(b"exit\n")
        assert term.exit_code() == 0, term.seen
    finally:
        term.close()
    with shelly.app.run():
        assert shelly.probe.remote() == "hello from the volume\n"
        app_id = shelly.app.app_id
        [container] = wait_for(  # this app's runner, not the shell's container that may still be stopping
            lambda: [
                c
                for c in json.loads(_cli(docker_stack, docker_user, "container", "list", "--json"))
                if c["app"] == app_id
            ],
            30,
            "the runner",
        )
        out = _cli(docker_stack, docker_user, "container", "exec", container["id"], "--", "cat", "/data/hello.txt")
        assert out == "hello from the volume\n"
        assert "s3cret" not in _cli(docker_stack, docker_user, "container", "exec", container["id"], "--", "env")
    minimodal.Volume.delete("shell-vol")
