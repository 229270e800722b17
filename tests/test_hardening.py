"""The container sandbox holds under both container runtimes (runc and gVisor's runsc): escape attempts fail.

Each attempt runs as a function inside a runner container, under runc and under runsc (the ``runtime``
fixture is parametrized; runsc is installed and registered by ``make docker-base``), must fail there
and leave the host unchanged. Runs the Docker runtime directly against the real engine (fixtures from
tests/test_docker_runtime.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import cloudpickle
import docker
import pytest

import minimodal
from minimodal.exception import InsufficientResourcesError, InvalidError, RemoteError
from mm_app import keyspace
from tests import test_docker_runtime as base
from tests.conftest import RedisServer, Stack, docker_engine, missing, start_stack, use_stack
from tests.functions import hardening
from tests.test_docker_runtime import StartRunner, payload
from workers import network
from workers.network import bridge_gateway
from workers.runtimes.docker import CONTAINER_RUNTIMES, RUNNER_PATH, SDK_PATH, DockerRuntime

pytestmark = pytest.mark.docker

# The Docker runtime tests' fixtures: an engine client, runners stopped after each test.
client, start = base.client, base.start
no_container_is_left_behind = base.no_container_is_left_behind


@pytest.fixture(params=CONTAINER_RUNTIMES)
def runtime(request: pytest.FixtureRequest, client: docker.DockerClient) -> Iterator[DockerRuntime]:
    """A Docker runtime of each container runtime: every test here runs under runc and under runsc."""
    try:
        runtime = DockerRuntime(client, startup_timeout=60, container_runtime=request.param)
    except InvalidError as exc:
        missing(f"{exc}")
    base.RUNTIME_IDS.append(runtime.id)
    yield runtime
    runtime.shutdown()


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


def test_the_root_file_system_is_read_only_and_tmp_is_writable(start: StartRunner, runtime: DockerRuntime) -> None:
    paths = ["/tmp/probe", "/probe", "/etc/probe", "/usr/lib/probe", "/home/probe", "/opt/mm/runner/probe"]
    found = run(start(hardening.write_probe), paths)
    assert found.pop("/tmp/probe") == "ok"
    assert set(found.values()) <= {"EROFS", "EACCES"}, found
    if runtime.container_runtime == "runc":  # gVisor checks the mode bits first: EACCES everywhere
        assert "EROFS" in found.values()


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_host_goes_on(
    client: docker.DockerClient, start: StartRunner, runtime: Any
) -> None:
    if runtime.container_runtime == "runc":
        runtime.pids_limit = 64
        runner = start(hardening.fork_bomb)
        forked, refused = run(runner, 10_000)
        assert refused == "EAGAIN" and forked < 64, (forked, refused)
        assert run(runner, 3) == (3, None)  # the same container serves the next input
    else:
        # Under gVisor the limit counts the sandbox kernel's own threads: the bomb stops the sandbox itself.
        runner = start(hardening.fork_bomb)
        outcome = runner.call(payload(10_000), call_id="fc-h", idx=0)
        assert not outcome.ok and outcome.runner_lost, outcome
        assert run(start(hardening.fork_bomb), 3) == (3, None)  # a fresh container serves the next input
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


def outside() -> tuple[str, int]:
    """An address beyond the host that this machine reaches (its Debian mirror), else skip (fail in CI)."""
    try:
        with socket.create_connection(("deb.debian.org", 80), timeout=5) as sock:
            return sock.getpeername()[0], 80
    except OSError as exc:
        missing(f"this machine reaches nothing outside ({exc}), so outbound traffic cannot be shown")
        raise


def test_block_network_leaves_only_loopback_and_no_connection_out(
    start: StartRunner, host_listener: tuple[str, int]
) -> None:
    open_runner = start(hardening.connect)
    assert run(open_runner, *outside()) == "connected"  # the default: outbound allowed, beyond the host

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
        assert allowed.remote(*outside()) == "connected"
        assert allowed.remote(*host_listener) == "ECONNREFUSED"  # the host refuses its runners' bridge
        assert blocked.remote(*host_listener) in ("ENETUNREACH", "EHOSTUNREACH")


def test_block_network_without_docker_fails_the_call_clearly(user: str) -> None:
    app = minimodal.App("hardening-process")
    blocked = app.function(serialized=True, name="blocked", block_network=True)(hardening.connect)
    with app.run(), pytest.raises(RemoteError, match="block_network=True needs the Docker runtime"):
        blocked.remote("127.0.0.1", 1)


# ---- Escape attempts, each under runc and runsc -------------------------------------------------------------


def host_pid(client: docker.DockerClient, runner: Any) -> int:
    runner.container.reload()
    return int(runner.container.attrs["State"]["Pid"])


def test_a_function_sees_neither_the_hosts_processes_nor_another_users(
    client: docker.DockerClient, start: StartRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "MM_HOST_ONLY_" + uuid.uuid4().hex
    monkeypatch.setenv(marker, "1")  # in this (host) process's environment, which no container may read
    other = start(hardening.processes)
    run(other, marker)

    found = run(start(hardening.processes), marker)

    assert found["leaked"] is False
    assert "docker-init" in found["pid1"], found  # /proc/1 is the container's own init, not the host's
    commands = found["processes"].values()
    assert all("docker-init" in c or RUNNER_PATH in c for c in commands), commands
    assert len(commands) <= 3, commands


def test_the_runner_and_sdk_files_cannot_be_overwritten_and_stay_unchanged_on_the_host(
    start: StartRunner, runtime: DockerRuntime
) -> None:
    sdk_file = runtime.sdk_dir / "__init__.py"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (runtime.runner_file, sdk_file)}
    paths = [RUNNER_PATH, f"{SDK_PATH}/__init__.py", f"{SDK_PATH}/new.py", "/usr/bin/python3", "/etc/passwd"]

    found = run(start(hardening.write_probe), paths)

    assert set(found.values()) <= {"EROFS", "EACCES"}, found
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before


def test_mount_raw_sockets_kernel_modules_namespaces_and_the_clock_are_refused(
    start: StartRunner, runtime: DockerRuntime, block_network: bool
) -> None:
    before = time.time()

    found = run(start(hardening.privileged_calls, block_network=block_network))

    refused = {"EPERM", "EACCES", "EAFNOSUPPORT"}
    assert found.pop("raw") in refused and found.pop("packet") in refused, found
    if runtime.container_runtime == "runsc":  # a user namespace of gVisor's kernel: no host privilege in it
        assert found.pop("unshare") in ("ok", "EPERM"), found
    assert set(found.values()) <= {"EPERM", "EACCES", "ENOSYS"}, found
    assert abs(time.time() - before) < 60  # the host's clock did not move


@pytest.fixture(params=[False, True], ids=["networked", "block_network"])
def block_network(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_a_function_cannot_ptrace_the_worker_or_another_containers_runner(
    client: docker.DockerClient, start: StartRunner
) -> None:
    other = start(hardening.sandbox)
    run(other)
    targets = [os.getpid(), host_pid(client, other)]

    found = run(start(hardening.ptrace), targets)

    assert "attached" not in found.values(), found
    assert set(found.values()) <= {"ESRCH", "EPERM"}, found


def test_only_harmless_devices_open(start: StartRunner) -> None:
    found = run(start(hardening.devices))

    opened = {path for path, result in found.items() if result == "opened"}
    harmless = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/tty"}
    harmless |= {"/dev/fuse", "/dev/net/tun"}  # gVisor's own emulations: they reach its kernel, not the host's
    assert opened <= harmless, sorted(opened - harmless)
    assert not any(p in found for p in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/sda", "/dev/vda"))


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killing_the_runners_parent_ends_at_most_the_functions_own_container(
    client: docker.DockerClient, start: StartRunner, runtime: DockerRuntime, sig: str
) -> None:
    bystander = start(hardening.pid_after)
    runner = start(hardening.kill_parent)

    outcome = runner.call(payload(sig), call_id="fc-h", idx=0)

    if outcome.ok:  # Linux ignores SIGKILL sent to a namespace's init from inside it
        assert cloudpickle.loads(outcome.data)["parent"] == 1
        assert runtime.container_runtime == "runsc" or sig == "SIGKILL"
    else:  # docker-init passes SIGTERM on to the runner; gVisor lets SIGKILL reach its init
        assert outcome.runner_lost and "the next call starts a fresh container" in outcome.message, outcome
    assert bystander.alive and isinstance(run(bystander, None), int)  # another container is untouched
    assert run(start(hardening.pid_after), None) > 0  # and the worker starts the next one


def test_filling_tmp_stops_at_its_size(start: StartRunner) -> None:
    written, refused = run(start(hardening.fill, memory=1024), "/tmp/fill", 1024)

    assert refused == "ENOSPC" and written <= 512, (written, refused)


def test_a_10_gib_sparse_file_is_bounded_by_tmp_and_refused_elsewhere(start: StartRunner) -> None:
    free = shutil.disk_usage("/").free
    runner = start(hardening.sparse, memory=1024)

    found = run(runner, "/tmp/sparse", 10 << 30, 1024)
    elsewhere = run(runner, "/var/sparse", 10 << 30, 4)

    assert found["created"] == "ok" and found["refused"] == "ENOSPC" and found["written"] <= 512, found
    assert elsewhere["created"] in ("EROFS", "EACCES"), elsewhere
    assert shutil.disk_usage("/").free > free - (256 << 20)  # the host's disk did not take it


def test_a_memory_bomb_ends_in_an_out_of_memory_error_and_the_next_input_gets_a_fresh_container(
    start: StartRunner,
) -> None:
    runner = start(hardening.memory_bomb, memory=200)

    outcome = runner.call(payload(1024), call_id="fc-h", idx=0)

    assert not outcome.ok and outcome.runner_lost, outcome
    assert "out of memory" in outcome.message or outcome.error_type == "MemoryError", outcome
    fresh = start(hardening.memory_bomb, memory=200)
    assert run(fresh, 16) == 16  # the worker (this process) goes on and starts another


def test_another_users_volume_cache_and_the_workers_secrets_are_out_of_reach(start: StartRunner, tmp_path: Any) -> None:
    theirs = tmp_path / "user-a" / "volume"
    theirs.mkdir(parents=True)
    (theirs / "data.txt").write_text("user a's data")
    token = tmp_path / "worker.token"
    token.write_text("secret")
    mine = tmp_path / "user-b" / "volume"
    mine.mkdir(parents=True)
    runner = start(hardening.read_paths, mounts={"/data": str(mine)})

    paths = [
        str(theirs / "data.txt"),
        str(token),
        f"/proc/1/root{theirs}/data.txt",
        "/data/../../user-a/volume/data.txt",
    ]
    found = run(runner, paths)

    assert "read" not in found.values(), found
    assert set(found.values()) <= {"ENOENT", "EACCES"}, found


# ---- Networks: users cannot reach each other, the host or private ranges --------------------------------


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_a_function_reaches_no_other_container_nor_the_host_nor_private_or_metadata_addresses(
    client: docker.DockerClient, start: StartRunner, runtime: DockerRuntime, host_listener: tuple[str, int]
) -> None:
    victim = start(hardening.listen)  # another user's function, listening on every address of its container
    port = run(victim)
    assert victim.container is not None
    victim.container.reload()
    victim_ip = victim.container.attrs["NetworkSettings"]["Networks"][runtime.network]["IPAddress"]
    attacker = start(hardening.connect_all)
    view = run(start(hardening.network_view))
    _, listener_port = host_listener  # a host service on all interfaces, like a Redis or an API bound to 0.0.0.0
    targets = [(victim_ip, port)] + [(address, listener_port) for address in host_addresses()]
    targets += [(view["gateway"], listener_port), ("172.17.0.1", listener_port), ("169.254.169.254", 80)]
    targets += [(socket.gethostname(), listener_port), ("10.0.0.1", 6379), ("192.168.0.1", 80)]

    found = run(attacker, targets, 2)

    assert "connected" not in found.values(), found
    assert view["address"] != victim_ip and view["gateway"], view
    assert not str(view["resolved"]).startswith("unresolved"), view  # names still resolve (Docker's DNS)
    assert run(attacker, [outside()], 5) == {f"{outside()[0]}:80": "connected"}  # and the internet is there


def test_the_host_still_reaches_a_containers_port_while_the_container_cannot_reach_the_host(
    start: StartRunner, runtime: DockerRuntime, host_listener: tuple[str, int]
) -> None:
    server = start(hardening.listen)
    port = run(server)
    assert server.container is not None
    server.container.reload()
    address = server.container.attrs["NetworkSettings"]["Networks"][runtime.network]["IPAddress"]

    with socket.create_connection((address, port), timeout=5):
        pass  # the replies come back through INPUT: only new connections from the bridge are refused
    assert run(start(hardening.connect), *host_listener) == "ECONNREFUSED"


def test_the_runners_network_has_traffic_between_containers_off_and_its_firewall_on(
    client: docker.DockerClient, start: StartRunner, runtime: DockerRuntime
) -> None:
    start(hardening.pid_after)

    attrs = client.networks.get(runtime.network).attrs
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout

    assert attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    bridge = attrs["Options"]["com.docker.network.bridge.name"]
    assert any(r.startswith(f"-A INPUT -i {bridge} ") and "REJECT" in r for r in rules.splitlines()), rules
    assert "-d 169.254.0.0/16 -i " + bridge in rules


def ours(bridge: str | None = None) -> list[str]:
    """MiniModal's iptables rules, of one bridge or of every other one."""
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout.splitlines()
    mine = [r for r in rules if "--comment minimodal" in r]
    return [r for r in mine if f"-i {bridge} " in r] if bridge else mine


def test_removing_a_network_removes_its_firewall_rules_and_only_those(client: docker.DockerClient) -> None:
    name = f"mmtest-{uuid.uuid4().hex[:6]}"
    bridge = network.ensure_network(client, name)
    first = ours(bridge)
    assert network.ensure_network(client, name) == bridge
    assert ours(bridge) == first and len(first) > 2  # a second call adds nothing
    others = [r for r in ours() if r not in first]

    assert network.remove_network(client, name)

    assert ours(bridge) == []
    assert all(r in ours() for r in others)  # other networks' rules stay


# ---- The container runtime as a worker's setting and a function's placement ------------------------------


@pytest.fixture(scope="module")
def gvisor_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose one worker runs its containers under gVisor (MINIMODAL_CONTAINER_RUNTIME=runsc)."""
    client = docker_engine()
    client.close()
    home = tmp_path_factory.mktemp("mmgvisor")
    stack = start_stack(
        redis_server, home, runtime="docker", db=11, worker_env={"MINIMODAL_CONTAINER_RUNTIME": "runsc"}
    )
    yield stack
    stack.stop()


def test_a_runsc_worker_runs_every_function_under_gvisor_and_registers_it(
    gvisor_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stack(gvisor_stack, request, monkeypatch)
    app = minimodal.App("gvisor")
    image = minimodal.Image.debian_slim()
    plain = app.function(image=image, serialized=True, name="plain")(hardening.kernel)
    asks = app.function(
        image=image, serialized=True, name="asks", experimental_options={"container_runtime": "gvisor"}
    )(hardening.kernel)

    with app.run():
        assert plain.remote() == "4.4.0"  # gVisor's kernel, not the host's
        assert asks.remote() == "4.4.0"
    assert gvisor_stack.redis_client is not None
    registered = gvisor_stack.redis_client.hvals(keyspace.workers_key())
    assert [json.loads(raw)["sandbox"] for raw in registered] == ["runsc"]


def test_a_function_asking_for_gvisor_is_refused_where_no_worker_offers_it(docker_user: str) -> None:
    app = minimodal.App("wants-gvisor")
    image = minimodal.Image.debian_slim()
    asks = app.function(image=image, serialized=True, name="asks", experimental_options={"container_runtime": "runsc"})(
        hardening.kernel
    )
    plain = app.function(image=image, serialized=True, name="plain")(hardening.kernel)

    with app.run():
        assert plain.remote() == os.uname().release  # the runc worker: the host's kernel
        with pytest.raises(InsufficientResourcesError, match="run under runsc"):
            asks.remote()
