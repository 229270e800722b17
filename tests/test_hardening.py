"""The container sandbox holds: no privileges, no other processes, no writes outside /tmp, no fork bomb, no network.

Runs the Docker runtime directly against the real engine (fixtures from tests/test_docker_runtime.py).
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import cloudpickle
import docker
import pytest

import minimodal
from minimodal.exception import RemoteError
from tests import test_docker_runtime as base
from tests.functions import hardening
from tests.test_docker_runtime import StartRunner, payload
from workers.network import bridge_gateway
from workers.runtimes.docker import RUNNER_PATH

pytestmark = pytest.mark.docker

# The Docker runtime tests' fixtures: an engine client, a runtime, runners stopped after each test.
client, runtime, start = base.client, base.runtime, base.start
no_container_is_left_behind = base.no_container_is_left_behind


@pytest.fixture(scope="module", autouse=True)
def probes_travel_by_value() -> Iterator[None]:
    cloudpickle.register_pickle_by_value(hardening)
    yield
    cloudpickle.unregister_pickle_by_value(hardening)


def run(runner: Any, *args: Any) -> Any:
    outcome = runner.call(payload(*args), call_id="fc-h", idx=0)
    assert outcome.ok, outcome
    return cloudpickle.loads(outcome.data)


def test_the_runner_is_unprivileged_limited_and_alone_in_its_container(start: StartRunner) -> None:
    other = start(hardening.sandbox)  # a second container: its processes must not show in the first
    assert run(other)["uid"] == 1000
    found = run(start(hardening.sandbox, memory=300))

    assert found["uid"] == 1000 and found["capabilities"] == 0 and found["no_new_privs"] == "1"
    assert int(found["memory_limit"]) == 300 * 1024 * 1024
    assert found["docker_socket"] == []
    commands = sorted(found["processes"].values())
    assert len(commands) <= 3, commands  # docker-init, the runner (and the reading of /proc itself)
    assert all("docker-init" in c or RUNNER_PATH in c for c in commands), commands


def test_a_function_sets_no_memory_and_still_gets_a_limit(start: StartRunner, runtime: Any) -> None:
    found = run(start(hardening.sandbox))
    assert int(found["memory_limit"]) == runtime.default_memory * 1024 * 1024


def test_the_root_file_system_is_read_only_and_tmp_is_writable(start: StartRunner) -> None:
    paths = ["/tmp/probe", "/probe", "/etc/probe", "/usr/lib/probe", "/home/probe", "/opt/mm/runner/probe"]
    found = run(start(hardening.write_probe), paths)
    assert found.pop("/tmp/probe") == "ok"
    assert set(found.values()) <= {"EROFS", "EACCES"}, found
    assert "EROFS" in found.values()


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_runner_and_host_go_on(
    client: docker.DockerClient, start: StartRunner, runtime: Any
) -> None:
    runtime.pids_limit = 64
    runner = start(hardening.fork_bomb)
    forked, refused = run(runner, 10_000)
    assert refused == "EAGAIN" and forked < 64, (forked, refused)
    assert run(runner, 3) == (3, None)  # the same container serves the next input
    assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks


@pytest.fixture
def host_listener(client: docker.DockerClient) -> Iterator[tuple[str, int]]:
    """A TCP listener on the host, reachable from containers on the default bridge at its gateway."""
    gateway = bridge_gateway(client.networks.get("bridge").attrs)
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield gateway, server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_block_network_leaves_only_loopback_and_no_connection_out(
    start: StartRunner, host_listener: tuple[str, int]
) -> None:
    open_runner = start(hardening.connect)
    assert run(open_runner, *host_listener) == "connected"  # the default: outbound allowed

    blocked = start(hardening.connect, block_network=True)
    assert run(blocked, *host_listener) in ("ENETUNREACH", "EHOSTUNREACH")
    assert run(start(hardening.sandbox, block_network=True))["interfaces"] == ["lo"]


def test_block_network_reaches_the_container_through_the_sdk_and_the_api(
    docker_user: str, host_listener: tuple[str, int]
) -> None:
    app = minimodal.App("hardening")
    image = minimodal.Image.debian_slim()
    blocked = app.function(image=image, serialized=True, name="blocked", block_network=True)(hardening.connect)
    allowed = app.function(image=image, serialized=True, name="allowed")(hardening.connect)
    with app.run():
        assert allowed.remote(*host_listener) == "connected"
        assert blocked.remote(*host_listener) in ("ENETUNREACH", "EHOSTUNREACH")


def test_block_network_without_docker_fails_the_call_clearly(user: str) -> None:
    app = minimodal.App("hardening-process")
    blocked = app.function(serialized=True, name="blocked", block_network=True)(hardening.connect)
    with app.run(), pytest.raises(RemoteError, match="block_network=True needs the Docker runtime"):
        blocked.remote("127.0.0.1", 1)
