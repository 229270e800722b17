"""Sandboxes on the real stack: containers created at run time, exec, streams, stdin, files, lifecycle."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import pytest
import requests
from redis import Redis

import minimodal
from minimodal import protocol
from minimodal.exception import SandboxFilesystemError, SandboxTerminatedError, SandboxTimeoutError
from tests.conftest import (
    RedisServer,
    Stack,
    docker_engine,
    missing,
    start_stack,
    stop_process,
    use_stack,
    wait_for,
)

pytestmark = pytest.mark.docker


def sandbox_containers(stack: Stack, sandbox_id: str | None = None) -> list:
    client = docker_engine()
    try:
        found = client.containers.list(all=True, filters={"label": [f"minimodal.home={stack.home}"]})
        return [
            c
            for c in found
            if c.labels.get("minimodal.sandbox") and sandbox_id in (None, c.labels["minimodal.sandbox"])
        ]
    finally:
        client.close()


def test_exec_streams_stdout_line_by_line_while_the_command_runs(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        flag = "/tmp/go"
        # The command prints one line, then waits for a file that the test creates only after it read that line.
        p = sb.exec("sh", "-c", f"echo first; while [ ! -e {flag} ]; do sleep 0.05; done; echo second")
        lines = iter(p.stdout)
        assert next(lines) == "first\n"
        assert p.poll() is None  # the command is still running: the first line came before its end
        sb.exec("touch", flag).wait()
        assert next(lines) == "second\n"
        assert list(lines) == []
        assert p.wait() == 0
        assert p.returncode == 0
    finally:
        sb.terminate()


def test_stdin_round_trips_through_cat(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        p = sb.exec("cat")
        p.stdin.write(b"hello ")
        p.stdin.write("sandbox\n")
        p.stdin.drain()
        assert next(iter(p.stdout)) == "hello sandbox\n"
        p.stdin.write(b"bye")
        p.stdin.write_eof()
        p.stdin.drain()
        assert p.stdout.read() == "bye"
        assert p.wait() == 0
    finally:
        sb.terminate()


def test_two_execs_run_at_once_and_exit_codes_come_back(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        # Each waits for the other's file: they can only both end if they run at the same time.
        a = sb.exec("sh", "-c", "touch /tmp/a; while [ ! -e /tmp/b ]; do sleep 0.05; done; echo a; exit 3")
        b = sb.exec("sh", "-c", "touch /tmp/b; while [ ! -e /tmp/a ]; do sleep 0.05; done; echo b >&2; exit 0")
        assert a.wait() == 3
        assert b.wait() == 0
        assert a.stdout.read() == "a\n"
        assert b.stderr.read() == "b\n"
        assert b.stdout.read() == ""
        assert sb.exec("sh", "-c", "exit 42").wait() == 42
        assert sb.exec("no-such-command").wait() in (126, 127)
    finally:
        sb.terminate()


def test_the_entrypoint_streams_reads_stdin_and_sets_the_returncode(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create("sh", "-c", "read name; echo hi $name; echo oops >&2; exit 7", timeout=120)
    assert sb.poll() is None
    sb.stdin.write(b"ada\n")
    sb.stdin.drain()
    assert sb.stdout.read() == "hi ada\n"
    assert sb.stderr.read() == "oops\n"
    sb.wait()
    assert sb.returncode == 7
    with pytest.raises(SandboxTerminatedError):
        sb.exec("true")


def test_terminate_ends_the_sandbox_and_removes_its_container(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    p = sb.exec("sleep", "100")
    assert sandbox_containers(docker_stack, sb.object_id)
    sb.terminate()
    with pytest.raises(SandboxTerminatedError):
        sb.wait()
    assert sb.returncode == 137
    assert p.wait() == 137
    wait_for(lambda: not sandbox_containers(docker_stack, sb.object_id), 30, "the container to be removed")


def test_the_timeout_ends_a_sandbox(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create("sleep", "100", timeout=2)
    with pytest.raises(SandboxTimeoutError, match="timeout of 2"):
        sb.wait()
    assert sb.returncode == 124


def test_idle_timeout_ends_a_sandbox_nobody_uses_but_not_one_running_an_exec(
    docker_stack: Stack, docker_user: str
) -> None:
    sb = minimodal.Sandbox.create(timeout=120, idle_timeout=2)
    p = sb.exec("sleep", "3")  # longer than the idle timeout: a running exec keeps the sandbox alive
    assert p.wait() == 0
    assert sb.poll() is None
    with pytest.raises(SandboxTimeoutError, match="idle"):
        sb.wait()
    assert sb.returncode == 124


def test_exec_timeout_kills_the_command(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        p = sb.exec("sh", "-c", "echo started; sleep 60", timeout=1)
        assert p.wait() == 124
        assert p.stdout.read() == "started\n"
    finally:
        sb.terminate()


def test_files_go_in_and_out(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        sb.mkdir("/tmp/work/deep", parents=True)
        with sb.open("/tmp/work/notes.txt", "w") as f:
            f.write("line one\n")
        with sb.open("/tmp/work/notes.txt", "a") as f:
            f.write("line two\n")
        with sb.open("/tmp/work/notes.txt") as f:
            assert f.readline() == "line one\n"
            assert f.read() == "line two\n"
        blob = bytes(range(256)) * 1000
        with sb.open("/tmp/work/blob.bin", "wb") as f:
            f.write(blob)
        with sb.open("/tmp/work/blob.bin", "rb") as f:
            assert f.read() == blob
        assert sb.exec("cat", "/tmp/work/notes.txt").stdout.read() == "line one\nline two\n"
        assert sb.ls("/tmp/work") == ["blob.bin", "deep", "notes.txt"]
        sb.rm("/tmp/work/blob.bin")
        sb.rm("/tmp/work/deep", recursive=True)
        assert sb.ls("/tmp/work") == ["notes.txt"]
        with pytest.raises(SandboxFilesystemError, match="no such file"):
            sb.open("/tmp/work/missing.txt")
        with pytest.raises(SandboxFilesystemError, match="no such file"):
            sb.ls("/nowhere")
    finally:
        sb.terminate()


def test_a_sandbox_of_one_user_is_invisible_to_another(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        p = sb.exec("echo", "mine")
        intruder = {"Authorization": f"Bearer {docker_stack.new_user('sandbox-intruder')}"}
        base = f"{docker_stack.url}/v1/sandboxes/{sb.object_id}"
        routes = [
            ("GET", base, None),
            ("POST", base + "/tags", {"tags": {"a": "b"}}),
            ("POST", base + "/exec", {"cmd": ["true"]}),
            ("GET", base + f"/processes/{p.process_id}/output?fd=1", None),
            ("POST", base + f"/processes/{p.process_id}/stdin", {"data": ""}),
            ("GET", base + f"/processes/{p.process_id}", None),
            ("POST", base + "/snapshot", None),
            ("POST", base + "/terminate", None),
        ]
        for method, url, body in routes:
            reply = requests.request(method, url, json=body, headers=intruder, timeout=30)
            assert reply.status_code == 404, (method, url, reply.text)
            assert reply.json()["error"]["type"] == "NotFoundError"
        listed = requests.get(f"{docker_stack.url}/v1/sandboxes", headers=intruder, timeout=30).json()
        assert listed == {"sandboxes": []}
        assert sb.poll() is None  # the intruder's terminate did nothing
        assert p.stdout.read() == "mine\n"
    finally:
        sb.terminate()


def test_a_client_that_reconnects_reads_the_rest_of_the_stream(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        p = sb.exec("sh", "-c", "echo 1; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo 2; echo 3")
        assert next(iter(p.stdout)) == "1\n"
        sb.exec("touch", "/tmp/go").wait()
        # A new connection (another handle, as after a client restart) from the cursor the first one reached.
        again = minimodal.sandbox.StreamReader(sb._client, sb.object_id, p.process_id, 1)
        again._cursor = p.stdout._cursor
        assert again.read() == "2\n3\n"  # the rest, and nothing twice
        assert again.read() == ""  # past the end: it ends at once
    finally:
        sb.terminate()


def test_sandboxes_are_listed_by_app_and_tags(docker_stack: Stack, docker_user: str) -> None:
    app = minimodal.App("sandbox-list")
    with app.run():
        sb = minimodal.Sandbox.create(app=app, timeout=120, tags={"kind": "eval"})
        other = minimodal.Sandbox.create(timeout=120)
        try:
            assert [s.object_id for s in minimodal.Sandbox.list(app_id=app.app_id)] == [sb.object_id]
            assert [s.object_id for s in minimodal.Sandbox.list(tags={"kind": "eval"})] == [sb.object_id]
            other.set_tags({"kind": "eval"})
            assert {s.object_id for s in minimodal.Sandbox.list(tags={"kind": "eval"})} == {
                sb.object_id,
                other.object_id,
            }
            assert minimodal.Sandbox.from_id(sb.object_id).poll() is None
        finally:
            other.terminate()
    # `app stop` (the end of app.run()) terminated the app's sandbox
    with pytest.raises(SandboxTerminatedError):
        minimodal.Sandbox.from_id(sb.object_id).wait()


def test_the_aio_forms_work(docker_stack: Stack, docker_user: str) -> None:
    import asyncio

    async def main() -> list[str]:
        sb = await minimodal.Sandbox.create.aio(timeout=120)
        try:
            p = await sb.exec.aio("sh", "-c", "echo a; echo b")
            lines = [line async for line in p.stdout]
            assert await p.wait.aio() == 0
            return lines
        finally:
            await sb.terminate.aio()

    assert asyncio.run(main()) == ["a\n", "b\n"]


def test_a_snapshot_serves_as_a_functions_image(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        with sb.open("/opt/answer.txt", "w") as f:
            f.write("42")
        image = sb.snapshot_filesystem()
    finally:
        sb.terminate()
    app = minimodal.App("from-snapshot")

    def read_answer() -> str:
        with open("/opt/answer.txt") as f:
            return f.read()

    fn = app.function(serialized=True, image=image, name="read_answer")(read_answer)
    with app.run():
        assert fn.remote() == "42"
    other = minimodal.Sandbox.create(image=image, timeout=120)
    try:
        assert other.exec("cat", "/opt/answer.txt").stdout.read() == "42"
    finally:
        other.terminate()
        client = docker_engine()
        try:
            client.images.remove(image.layers[0]["tag"])  # the snapshot's tag (images built on it keep its layers)
        finally:
            client.close()


def test_creating_many_sandboxes_at_once_needs_no_lock_step(docker_stack: Stack, docker_user: str) -> None:
    errors: list[BaseException] = []
    made: list[minimodal.Sandbox] = []

    def make() -> None:
        try:
            made.append(minimodal.Sandbox.create("true", timeout=60))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for sb in made:
        sb.wait()
        assert sb.returncode == 0


def test_a_worker_killed_under_a_running_sandbox_leaves_no_container(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker_engine().close()
    redis_server.client.connection_pool.reset()
    Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/11").flushdb()  # database 11 is this test's alone
    fast = {"MINIMODAL_HEARTBEAT_SECONDS": "0.5"}  # dead after 2.5 s without a beat
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIMODAL_HEARTBEAT_SECONDS", "0.5")  # the dispatcher's view of "dead" too
        stack = start_stack(redis_server, tmp_path / "home", runtime="docker", db=11, worker_env=fast)
    try:
        use_stack(stack, request, monkeypatch)
        sb = minimodal.Sandbox.create(timeout=300)
        p = sb.exec("sh", "-c", "echo up; sleep 300")
        assert next(iter(p.stdout)) == "up\n"
        assert sandbox_containers(stack, sb.object_id)
        worker = stack.processes["worker"]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        with pytest.raises(SandboxTerminatedError, match="was lost"):
            sb.wait()
        assert p.wait() == 137
        wait_for(lambda: not sandbox_containers(stack, sb.object_id), 60, "the sandbox's container to be removed")
        # The slot it held was released: a new worker takes a new sandbox.
        stack.spawn("worker", "worker", extra_env=fast)
        again = minimodal.Sandbox.create("true", timeout=60)
        again.wait()
        assert again.returncode == 0
    finally:
        stack.stop()
    assert sandbox_containers(stack) == []


def test_twenty_sandboxes_of_two_users_share_the_workers_fairly(docker_stack: Stack, docker_user: str) -> None:
    from minimodal._client import Client
    from minimodal.app import _ensure_image

    def create(token: str, *cmd: str) -> str:
        client = Client(docker_stack.url, token)
        body = {"image": _ensure_image(client, minimodal.Image.debian_slim()), "cmd": list(cmd), "timeout": 120}
        return client.request("POST", "/v1/sandboxes", json=body)["sandbox_id"]

    # Another user's sandboxes hold every slot of the worker, so that all twenty wait in the queues at once.
    slots = docker_stack.workers()[0]["slots"]
    blocker = docker_stack.new_user("sandbox-blocker", quota=slots)
    blockers = [create(blocker, "sleep", "300") for _ in range(slots)]
    client = Client(docker_stack.url, blocker)
    for sandbox_id in blockers:
        client.request("GET", f"/v1/sandboxes/{sandbox_id}", params={"wait": 30, "until": "running"}, timeout=60)
    users = {name: docker_stack.new_user(name) for name in ("sandbox-fair-a", "sandbox-fair-b")}
    owner = {}
    for name, token in users.items():
        for _ in range(10):
            owner[create(token, "sleep", "0.5")] = name
    for sandbox_id in blockers:
        client.request("POST", f"/v1/sandboxes/{sandbox_id}/terminate")
    for sandbox_id, name in owner.items():
        user_client = Client(docker_stack.url, users[name])

        def ended(sandbox_id: str = sandbox_id, user_client: Client = user_client) -> bool:
            reply = user_client.request("GET", f"/v1/sandboxes/{sandbox_id}", params={"wait": 10}, timeout=30)
            return reply["state"] == "finished"

        wait_for(ended, 120, f"sandbox {sandbox_id} to finish")
    assert docker_stack.redis_client is not None
    log = docker_stack.redis_client.xrange(protocol.dispatch_log_key())
    order = [owner[f[b"call"].decode()] for _, f in log if f[b"call"].decode() in owner]
    assert len(order) == 20
    for n in range(1, 21):  # at every point, neither user got more than one sandbox ahead of the other
        prefix = order[:n]
        assert abs(prefix.count("sandbox-fair-a") - prefix.count("sandbox-fair-b")) <= 1, order


def test_the_cli_lists_reads_runs_in_and_terminates_sandboxes(docker_stack: Stack, docker_user: str) -> None:
    import subprocess
    import sys

    sb = minimodal.Sandbox.create("sh", "-c", "echo booted; echo warned >&2; sleep 300", timeout=120)
    env = {**docker_stack.env, "MINIMODAL_TOKEN": docker_user}

    def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "minimodal", "sandbox", *argv],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert sb.object_id in listed.stdout and "running" in listed.stdout and "sleep 300" in listed.stdout
    ran = cli("exec", sb.object_id, "cat", stdin="through stdin\n")
    assert (ran.returncode, ran.stdout) == (0, "through stdin\n"), ran.stderr
    failed = cli("exec", sb.object_id, "sh", "-c", "echo bad >&2; exit 5", stdin="")
    assert (failed.returncode, failed.stderr) == (5, "bad\n")
    wait_for(lambda: "booted" in cli("logs", sb.object_id).stdout, 30, "the entrypoint's output")
    logs = cli("logs", sb.object_id)
    assert (logs.stdout, logs.stderr) == ("booted\n", "warned\n")
    ended = cli("terminate", sb.object_id)
    assert ended.returncode == 0 and "terminated" in ended.stdout
    assert sb.object_id not in cli("list").stdout
    assert "terminated (137)" in cli("list", "--all").stdout


def test_sandboxes_run_under_the_container_runtime_the_worker_is_configured_with(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = docker_engine()
    try:
        if "runsc" not in (client.info().get("Runtimes") or {}):
            missing("the Docker engine offers no runsc runtime (gVisor is not installed)")
    finally:
        client.close()
    Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/12").flushdb()  # database 12 is this test's alone
    worker_env = {"MINIMODAL_CONTAINER_RUNTIME": "runsc"}
    stack = start_stack(redis_server, tmp_path / "home", runtime="docker", db=12, worker_env=worker_env)
    try:
        use_stack(stack, request, monkeypatch)
        sb = minimodal.Sandbox.create(timeout=120)
        (container,) = sandbox_containers(stack, sb.object_id)
        assert container.attrs["HostConfig"]["Runtime"] == "runsc-net"  # gVisor, with the runners' bridge
        assert "gVisor" in sb.exec("dmesg").stdout.read()  # the kernel the sandbox sees is gVisor's
        sb.terminate()
    finally:
        stack.stop()
    assert sandbox_containers(stack) == []


def test_a_running_sandbox_counts_against_its_users_quota(docker_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIMODAL_TOKEN", docker_stack.new_user("sandbox-quota-one", quota=1))
    for key in ("MINIMODAL_HOME", "MINIMODAL_SERVER_URL"):
        monkeypatch.setenv(key, docker_stack.env[key])
    sb = minimodal.Sandbox.create(timeout=120)
    app = minimodal.App("sandbox-quota")
    double = app.function(serialized=True, name="double")(lambda x: 2 * x)
    with app.run():
        call = double.spawn(21)
        with pytest.raises(TimeoutError):
            call.get(timeout=3)  # the sandbox holds the user's only slot
        sb.terminate()
        assert call.get(timeout=60) == 42


def test_exec_with_pty_runs_the_command_on_a_terminal(docker_stack: Stack, docker_user: str) -> None:
    sb = minimodal.Sandbox.create(timeout=120)
    try:
        p = sb.exec("sh", "-c", "test -t 0 && test -t 1 && tty", pty=True)
        assert p.wait() == 0  # stdin and stdout are terminals
        assert p.stdout.read().strip().startswith("/dev/pts/")
        assert sb.exec("test", "-t", "1").wait() == 1  # without pty: a pipe
    finally:
        sb.terminate()


def test_terminating_a_queued_sandbox_ends_it_before_any_container_starts(
    docker_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from minimodal._client import Client
    from minimodal.app import _ensure_image

    token = docker_stack.new_user("sandbox-queued-one", quota=1)
    monkeypatch.setenv("MINIMODAL_TOKEN", token)
    for key in ("MINIMODAL_HOME", "MINIMODAL_SERVER_URL"):
        monkeypatch.setenv(key, docker_stack.env[key])
    since = int(time.time()) - 1
    first = minimodal.Sandbox.create(timeout=120)  # holds the user's only slot
    client = Client(docker_stack.url, token)
    body = {"image": _ensure_image(client, minimodal.Image.debian_slim()), "cmd": ["sleep", "100"], "timeout": 120}
    queued_id = client.request("POST", "/v1/sandboxes", json=body)["sandbox_id"]
    queued = minimodal.Sandbox.from_id(queued_id)
    assert queued.poll() is None and queued._info["state"] == "queued"  # waiting for the user's quota
    queued.terminate()
    assert queued.poll() == 137
    with pytest.raises(SandboxTerminatedError, match="before it started"):
        queued.wait()
    first.terminate()  # the slot frees: the queued entry may now be taken, and its task must do nothing
    assert docker_stack.redis_client is not None
    redis = docker_stack.redis_client

    def settled() -> bool:  # the queued entry has left the user's queue, and no task of it is in flight
        queues = [e for k in redis.scan_iter(protocol.pending_key("*")) for e in redis.lrange(k, 0, -1)]
        return not any(queued_id.encode() in raw for raw in [*queues, *redis.hvals(protocol.inflight_key())])

    wait_for(settled, 60, "the queued entry to leave the queue and the in-flight ledger")
    record = client.request("GET", f"/v1/sandboxes/{queued_id}")
    assert (record["state"], record["returncode"], record["started_at"], record["worker"]) == (
        "terminated",
        137,
        None,
        None,
    )
    docker = docker_engine()
    try:
        events = docker.events(
            since=since,
            until=int(time.time()) + 1,
            decode=True,
            filters={"type": "container", "label": f"minimodal.sandbox={queued_id}"},
        )
        assert [e.get("Action") for e in events] == []  # no container of it was ever created
    finally:
        docker.close()


def test_a_server_in_the_sandbox_is_reached_through_its_tunnels(docker_stack: Stack, docker_user: str) -> None:
    from minimodal.exception import InvalidError

    serve = "mkdir -p /srv && echo hello > /srv/hi.txt && exec python -m http.server 8000 --directory /srv"
    sb = minimodal.Sandbox.create("sh", "-c", serve, encrypted_ports=[8000], unencrypted_ports=[8001], timeout=120)
    try:
        sb.exec("python", "-m", "http.server", "8001", "--directory", "/srv")
        (container,) = sandbox_containers(docker_stack, sb.object_id)
        assert list(container.attrs["NetworkSettings"]["Networks"]) == ["minimodal"]  # the runners' bridge
        tunnels = sb.tunnels()
        assert sorted(tunnels) == [8000, 8001]
        encrypted, unencrypted = tunnels[8000], tunnels[8001]
        assert encrypted.url == f"{docker_stack.url}/v1/sandboxes/{sb.object_id}/tunnels/8000"
        assert encrypted.tls_socket == ("127.0.0.1", int(docker_stack.url.rsplit(":", 1)[1]))
        with pytest.raises(InvalidError, match="unencrypted_ports"):
            _ = encrypted.tcp_socket
        mine = {"Authorization": f"Bearer {docker_user}"}

        def fetch(url: str, headers: dict[str, str] | None = None) -> requests.Response | None:
            try:
                reply = requests.get(url, headers=headers, timeout=10)
            except requests.ConnectionError:
                return None  # the server in the sandbox is not listening yet
            return None if reply.status_code == 503 else reply

        reply = wait_for(lambda: fetch(encrypted.url + "/hi.txt", mine), 60, "the sandbox's server, through the API")
        assert (reply.status_code, reply.text) == (200, "hello\n")
        listing = fetch(encrypted.url, mine)  # redirected to .../8000/, the server's directory listing
        assert listing is not None and listing.status_code == 200 and "hi.txt" in listing.text
        other = {"Authorization": f"Bearer {docker_stack.new_user('tunnel-stranger')}"}
        assert requests.get(encrypted.url + "/hi.txt", headers=other, timeout=10).status_code == 404
        assert requests.get(encrypted.url + "/hi.txt", timeout=10).status_code == 401
        host, port = unencrypted.tcp_socket  # published on the worker's host: any TCP client reaches it
        reply = wait_for(lambda: fetch(f"http://{host}:{port}/hi.txt"), 60, "the sandbox's second server, over TCP")
        assert reply.text == "hello\n"
        assert fetch(unencrypted.url + "/hi.txt", mine).text == "hello\n"  # and through the API as well
    finally:
        sb.terminate()
    assert requests.get(encrypted.url + "/hi.txt", headers=mine, timeout=10).status_code == 404
    with pytest.raises(InvalidError, match="block_network"):
        minimodal.Sandbox.create(block_network=True, encrypted_ports=[8000])
    from minimodal._client import Client

    body = {"image": "im-x", "block_network": True, "unencrypted_ports": [8001]}
    with pytest.raises(InvalidError, match="block_network"):  # the API refuses it too
        Client(docker_stack.url, docker_user).request("POST", "/v1/sandboxes", json=body)
    assert sb._info["tunnels"] == {}  # an ended sandbox shows no ports


def test_a_process_printing_without_end_keeps_only_the_cap_in_redis_then_a_marker(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker_engine().close()
    cap = 1 << 20
    Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/13").flushdb()  # database 13 is this test's alone
    worker_env = {"MINIMODAL_SANDBOX_OUTPUT_BYTES": str(cap)}
    stack = start_stack(redis_server, tmp_path / "home", runtime="docker", db=13, worker_env=worker_env)
    try:
        use_stack(stack, request, monkeypatch)
        sb = minimodal.Sandbox.create(timeout=300)
        line = "0123456789abcdef\n"
        p = sb.exec("sh", "-c", f"yes 0123456789abcdef | head -c {100 * cap}; echo done >&2")  # 100 MiB
        assert p.wait() == 0  # it was never blocked: what is past the cap is read and dropped
        assert stack.redis_client is not None
        key = protocol.sandbox_output_key(sb.object_id, p.process_id, 1)
        kept = sum(len(fields[b"d"]) for _, fields in stack.redis_client.xrange(key) if b"d" in fields)
        assert cap < kept < cap + 300  # the cap, then the marker
        # Bounded against the 100 MiB written; each entry's overhead depends on how small the chunks
        # were read (smaller on a busy machine), so the bound on Redis's own figure is loose.
        assert stack.redis_client.memory_usage(key) < 8 * cap
        out = p.stdout.read()
        assert out[:cap] == (line * (cap // len(line) + 1))[:cap]
        assert out[cap:] == (
            "\n[minimodal: truncated] this process wrote over 1,048,576 bytes to stdout "
            "(MINIMODAL_SANDBOX_OUTPUT_BYTES); the rest of it is dropped\n"
        )
        assert p.stderr.read() == "done\n"  # each stream has its own cap
        assert sb.exec("echo", "small").stdout.read() == "small\n"  # and each process
        sb.terminate()
    finally:
        stack.stop()
    assert sandbox_containers(stack) == []


@pytest.mark.timeout(900)
def test_a_snapshot_goes_to_the_registry_and_runs_on_another_machines_engine(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cluster import _remove_leftovers, join, start_engine, start_registry, worker_ids

    main = docker_engine()
    registry = start_registry(tmp_path / "registry")
    engines = start_engine()
    engine = next(engines)  # a second Docker engine with no image at all: another machine
    Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/14").flushdb()  # database 14 is this test's alone
    home = tmp_path / "machine1"
    stack = start_stack(redis_server, home, runtime="docker", db=14, env={"MINIMODAL_REGISTRY": registry.address})
    machine2 = None
    snapshot = None
    try:
        use_stack(stack, request, monkeypatch)
        (first,) = worker_ids(stack)
        sb = minimodal.Sandbox.create(timeout=300)
        with sb.open("/opt/answer.txt", "w") as f:
            f.write("42")
        image = sb.snapshot_filesystem()
        sb.terminate()
        snapshot = image.layers[0]["tag"]
        assert snapshot.startswith(f"{registry.address}/minimodal/snapshot:")

        machine2 = join(stack, tmp_path / "machine2", engine)  # the first machine's worker leaves
        wait_for(lambda: len(worker_ids(stack) - {first}) == 1, 90, "the second machine's worker to beat")
        (joined,) = worker_ids(stack) - {first}
        stop_process(stack.processes.pop("worker"))
        wait_for(lambda: worker_ids(stack) == {joined}, 30, "the first worker to leave")

        # The default image was built on machine 1: machine 2's worker pulls it to start the sandbox.
        plain = minimodal.Sandbox.create("sh", "-c", "exit 3", timeout=300)
        plain.wait(raise_on_termination=False)
        assert (plain.returncode, plain._info["worker"]) == (3, joined)
        other = minimodal.Sandbox.create(image=image, timeout=300)
        try:
            assert other.exec("cat", "/opt/answer.txt").stdout.read() == "42"
            assert other._info["worker"] == joined
        finally:
            other.terminate()
        app = minimodal.App("snapshot-elsewhere")

        def read_answer() -> str:
            with open("/opt/answer.txt") as f:
                return f.read()

        fn = app.function(serialized=True, image=image, name="read_answer")(read_answer)
        with app.run():
            assert fn.remote() == "42"
        assert snapshot in [tag for i in engine.client().images.list() for tag in i.tags]  # pulled there
    finally:
        if machine2 is not None:
            stop_process(machine2, timeout=60)
        stack.stop()
        _remove_leftovers(main, home, registry.address)
        if snapshot is not None:
            with contextlib.suppress(Exception):
                main.images.remove(snapshot.split("/", 1)[1], noprune=True)  # the engine's local name of it
        main.close()
        with contextlib.suppress(StopIteration):
            next(engines)  # stops the second engine and removes all it made
        registry.process.terminate()
        registry.process.wait(timeout=15)
