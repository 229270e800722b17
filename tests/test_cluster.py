"""A cluster of machines: images through a registry, a worker that joins with one command, failover.

"Two machines on one box": the second machine is a second Docker engine that the test starts (its own
data root, exec root, socket, pid file and bridge ``mm-br1``; it never touches the main engine) and a
worker with its own MINIMODAL_HOME that joins with ``minimodal worker join``. The registry is Debian's
``docker-registry``, started by the test on a free loopback port. The database is the one thing the two
machines share: the control plane's SQLite file, standing in for a PostgreSQL server reached by URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

import minimodal
from minimodal.exception import ImageNotFoundError
from mm_app import keyspace
from tests.conftest import (
    PYTHON,
    ROOT,
    RedisServer,
    Stack,
    docker_engine,
    free_port,
    missing,
    start_stack,
    stop_process,
    use_stack,
    wait_for,
)
from tests.functions import cluster as fns
from tests.functions import volumes as volume_fns

BRIDGE = "mm-br1"  # the second engine's own bridge


@dataclass
class Registry:
    address: str
    process: subprocess.Popen[bytes]


def start_registry(storage: Path) -> Registry:
    from mm_app import image_registry

    if shutil.which(image_registry.SERVER) is None:
        missing("docker-registry is not installed (make system-deps installs it)")
    address = f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return processes[-1]

    try:
        image_registry.start(address, storage, spawn)
    except BaseException:
        for process in processes:
            process.kill()
            process.wait()
        raise
    return Registry(address, processes[0])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = start_registry(tmp_path / "registry")
    yield server
    server.process.terminate()
    server.process.wait(timeout=15)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.213.0.0/16 that no interface or route of this host uses."""
    taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    taken += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for third in range(10, 250):
        subnet = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if f"10.213.{third}." not in taken:
            return subnet
    raise AssertionError("no free 10.213.x.0/24 for the second engine's bridge")


@dataclass
class Engine:
    """A second dockerd: another machine's engine, as far as MiniModal can tell."""

    root: Path
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=120)


def start_engine() -> Iterator[Engine]:
    """Start the second engine (and its bridge); stop it by its pid and remove all it made, even on failure."""
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        missing("a second Docker engine needs dockerd and root")
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0:
        raise AssertionError(f"the bridge {BRIDGE} exists already: a previous run left it (ip link del {BRIDGE})")
    subnet = _free_subnet()
    # A short path of its own: the engine's and containerd's unix sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="mm2-", dir="/tmp"))
    (root / "daemon.json").write_text("{}")  # not the main engine's /etc/docker/daemon.json
    process = None
    try:
        subprocess.run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        with open(root / "dockerd.log", "wb") as log:
            process = subprocess.Popen(
                [
                    dockerd,
                    "--config-file",
                    str(root / "daemon.json"),
                    "--data-root",
                    str(root / "data"),
                    "--exec-root",
                    str(root / "exec"),
                    "-H",
                    f"unix://{root / 'docker.sock'}",
                    "--pidfile",
                    str(root / "docker.pid"),
                    f"--bridge={BRIDGE}",
                    "--iptables=false",  # the host's iptables belong to the main engine: leave them alone
                    "--ip-masq=false",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        engine = Engine(root, process)

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError("the second dockerd exited:\n" + (root / "dockerd.log").read_text()[-3000:])
            # A raw ping: a docker SDK client leaks its socket when it cannot negotiate a version.
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(2)
                probe.connect(str(root / "docker.sock"))
                probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return probe.recv(1024).endswith(b"OK")
            return False

        wait_for(answers, 60, "the second Docker engine to answer", interval=0.2)
        yield engine
    finally:
        bridges: list[str] = []  # the runners' networks a worker made on it: their bridges and rules are the host's
        if process is not None and process.poll() is None:
            from workers import network

            with contextlib.suppress(Exception):
                client = Engine(root, process).client()
                found = client.networks.list(filters={"label": "minimodal=1"})
                bridges = [b for n in found if (b := network.network_bridge(n.attrs))]
                client.close()
            for bridge in bridges:
                network.remove_firewall(bridge)
            process.terminate()  # dockerd stops its containers and its own containerd
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mount_point = line.split()[1]
            if mount_point.startswith(str(root)):
                subprocess.run(["umount", "-l", mount_point], capture_output=True)
        for bridge in (BRIDGE, *bridges):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def engine() -> Iterator[Engine]:
    yield from start_engine()


def join(stack: Stack, home: Path, engine: Engine, *, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """``minimodal worker join`` on "machine 2": its own home and engine, no MINIMODAL_* from machine 1."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMODAL_") and k != "DOCKER_HOST"}
    env.update(MINIMODAL_HOME=str(home), DOCKER_HOST=engine.host, MINIMODAL_WORKER_RUNTIME="docker")
    argv = [PYTHON, "-m", "minimodal", "worker", "join", "--server", stack.url]
    argv += ["--token", stack.env["MINIMODAL_WORKER_TOKEN"], "--concurrency", str(concurrency)]
    with open(home / "worker.log", "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def worker_ids(stack: Stack) -> set[str]:
    return {w["worker_id"] for w in stack.workers()}


def attempts(stack: Stack, token: str, call_id: str, count: int) -> list[dict[str, Any]]:
    """The call's attempts once ``count`` are recorded (the worker's recorder writes them off the call path)."""

    def recorded() -> list[dict[str, Any]] | None:
        reply = requests.get(
            f"{stack.url}/v1/calls/{call_id}/attempts", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        found = reply.json()["attempts"]
        return found if len([a for a in found if a["status"] == "completed"]) >= count else None

    return wait_for(recorded, 30, f"{count} completed attempts of {call_id}", interval=0.2)


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_two_engines_on_one_host_give_the_runners_network_bridges_of_their_own(engine: Engine) -> None:
    """Interface names are the host's: a second engine's runners' network must not take the first's bridge
    (it would put its own subnet's address on it, and the first engine's containers lose their route)."""
    from workers import network

    first, second = docker_engine(), engine.client()
    name = f"mmtest-{uuid.uuid4().hex[:6]}"
    try:
        bridge_one = network.ensure_network(first, name)
        subnet_one = first.networks.get(name).attrs["IPAM"]["Config"][0]["Subnet"]
        bridge_two = network.ensure_network(second, name)
        assert bridge_one != bridge_two and len(bridge_two) <= 15
        address = network.interface_ipv4(bridge_one)
        assert address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(subnet_one)
        assert network.remove_network(second, name)
        assert network.ensure_network(first, name) == bridge_one  # not stale: the first engine's stays as it was
        assert network.interface_ipv4(bridge_one) == address
    finally:
        network.remove_network(second, name)
        network.remove_network(first, name)
        first.close()
        second.close()


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_two_machines_share_images_through_the_registry_volumes_through_the_api_and_take_over_work(
    redis_server: RedisServer,
    registry: Registry,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    main = docker_engine()  # skips (or fails in CI) without the main engine and its base image
    second = engine.client()
    assert second.images.list() == []  # machine 2 starts with no image at all, not even the base
    control = tmp_path / "machine1"
    stack = start_stack(redis_server, control, runtime="docker", db=11)  # no registry yet: one machine, as today
    machine2: subprocess.Popen[bytes] | None = None
    nonce = uuid.uuid4().hex  # only in the layer built on machine 2, whose engine the test removes
    image = minimodal.Image.debian_slim().run_commands(f"echo built-on-machine-1 > {fns.MARKER}")
    try:
        request = type("R", (), {"node": type("N", (), {"nodeid": "cluster"})()})()
        token = use_stack(stack, request, monkeypatch)  # type: ignore[arg-type]
        secret = minimodal.Secret.from_dict({"MM_CLUSTER_SECRET": "decrypted on any machine"})
        vol = minimodal.Volume.from_name("cluster-vol", create_if_missing=True)
        app = minimodal.App("cluster")
        options: dict[str, Any] = {"image": image, "serialized": True, "volumes": {"/data": vol}, "timeout": 120}
        marker = app.function(name="marker", secrets=[secret], **options)(fns.marker)
        write = app.function(name="write", **options)(volume_fns.write)
        read = app.function(name="read", **options)(volume_fns.read)
        slow = app.function(name="slow", **options)(fns.double_slowly)
        with app.run():  # built on machine 1's engine, which alone has it
            assert _record(stack, token, image)["tag"].startswith("minimodal/image:")
            assert marker.remote("MM_CLUSTER_SECRET") == ("built-on-machine-1", "decrypted on any machine")

        # The operator sets MINIMODAL_REGISTRY and restarts the API and the worker.
        (alone,) = worker_ids(stack)
        for name in ("api", "worker"):
            stop_process(stack.processes.pop(name))
        stack.env["MINIMODAL_REGISTRY"] = registry.address
        stack.spawn("api", "api")
        stack.spawn("worker", "worker")
        wait_for(lambda: _answers(stack) and len(worker_ids(stack) - {alone}) == 1, 90, "the restarted stack")
        wait_for(lambda: alone not in worker_ids(stack), 30, "the old worker to leave the registry")
        (first,) = worker_ids(stack)
        with app.run():  # the next deploy pushes the image (the base too): its layers are cached, nothing is built
            built = _record(stack, token, image)
            assert built["tag"].startswith(f"{registry.address}/minimodal/image:")
            assert {e["state"] for e in built["events"]} == {"cached"}
            assert marker.remote("MM_CLUSTER_SECRET") == ("built-on-machine-1", "decrypted on any machine")
            assert write.remote("from-machine-1.txt", "written on machine 1") == 20

            # Machine 2 joins with one command; machine 1's worker leaves, so the next calls must go there.
            machine2 = join(stack, tmp_path / "machine2", engine)
            wait_for(lambda: len(worker_ids(stack) - {first}) == 1, 90, "the second machine's worker to beat")
            (joined,) = worker_ids(stack) - {first}
            stop_process(stack.processes.pop("worker"))
            wait_for(lambda: worker_ids(stack) == {joined}, 30, "the first worker to leave the registry")

            call = marker.spawn("MM_CLUSTER_SECRET")
            assert call.get(timeout=300) == ("built-on-machine-1", "decrypted on any machine")
            assert {a["worker"] for a in attempts(stack, token, call.object_id, 1)} == {joined}
            pulled = [tag for i in second.images.list() for tag in i.tags]
            assert any(tag.startswith(f"{registry.address}/minimodal/image:") for tag in pulled), pulled
            assert read.remote("from-machine-1.txt") == "written on machine 1"  # its own cache, synced by HTTP
            assert write.remote("from-machine-2.txt", "written on machine 2") == 20
            assert b"".join(vol.read_file("from-machine-2.txt")) == b"written on machine 2"
            assert (tmp_path / "machine2" / "volcache" / vol.object_id / "data" / "from-machine-1.txt").exists()

            # Built on machine 2, whose engine had no base: the base and the layers below come from the registry.
            app2 = minimodal.App("cluster-2")
            extended = image.env({"MM_CLUSTER_EXTRA": nonce})
            extra = app2.function(name="variable", image=extended, serialized=True, timeout=120)(fns.variable)
            with app2.run():
                assert extra.remote("MM_CLUSTER_EXTRA") == nonce
            layers = [(e["op"], e["state"]) for e in _record(stack, token, extended)["events"]]
            assert layers == [("minimodal_runtime", "cached"), ("run_commands", "cached"), ("env", "built")]
            assert f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim" in [
                tag for i in second.images.list() for tag in i.tags
            ]

            # Machine 1 gets a worker again; it is killed (SIGKILL) holding work: machine 2 finishes it all.
            stack.spawn("worker1b", "worker")
            wait_for(lambda: len(worker_ids(stack) - {joined}) == 1, 60, "a new worker on machine 1")
            (again,) = worker_ids(stack) - {joined}
            results: list[Any] = []
            mapper = threading.Thread(target=lambda: results.extend(slow.map(range(12), kwargs={"seconds": 1.5})))
            mapper.start()
            held = wait_for(lambda: _map_on(stack, again), 120, "machine 1's worker to hold part of the map")
            os.killpg(stack.processes["worker1b"].pid, signal.SIGKILL)
            mapper.join(timeout=300)
            assert not mapper.is_alive(), "the map did not finish after its worker was killed"
            assert results == [2 * x for x in range(12)]
            done = attempts(stack, token, held.call_id, 12)
            finished_by = {a["index"]: a["worker"] for a in done if a["status"] == "completed"}
            assert all(finished_by[i] == joined for i in range(held.start, held.end)), (held, finished_by)
    finally:
        if machine2 is not None:
            stop_process(machine2, timeout=60)
        stack.stop()
        _remove_leftovers(main, control, registry.address)
        main.close()
        second.close()
    log = (tmp_path / "machine2" / "worker.log").read_text(errors="replace")
    assert f"pulling {registry.address}/minimodal/image:" in log  # from the registry, not a shared engine


def _map_on(stack: Stack, worker_id: str) -> keyspace.InflightTask | None:
    assert stack.redis_client is not None
    for raw in stack.redis_client.hvals(keyspace.inflight_key()):
        task = keyspace.InflightTask.decode(raw)
        if task.worker_id == worker_id:
            return task
    return None


def _answers(stack: Stack) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(stack.url + "/health", timeout=2).ok
    return False


def _record(stack: Stack, token: str, image: minimodal.Image) -> dict[str, Any]:
    """The image's record (POST /v1/images answers the existing one): its tag and what each layer did."""
    reply = requests.post(
        f"{stack.url}/v1/images", json=image.spec(), headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert reply.status_code in (200, 201), reply.text
    return dict(reply.json())


def _remove_leftovers(main: Any, home: Path, registry: str) -> None:
    """Remove the killed worker's containers and the registry's names for images on the main engine (untagged
    only: the layers stay, as minimodal/image tags other runs reuse)."""
    from workers.runtimes.docker import remove_all_containers

    remove_all_containers(main, {"minimodal.home": str(home)})
    for tag in [tag for image in main.images.list() for tag in image.tags if tag.startswith(registry + "/")]:
        with contextlib.suppress(Exception):
            main.images.remove(tag, noprune=True)


@pytest.mark.docker
def test_a_worker_names_an_image_its_registry_lacks_and_tries_elsewhere_when_the_registry_is_down(
    registry: Registry,
) -> None:
    from workers.runtimes.base import RunnerSpec, RunnerStartError
    from workers.runtimes.docker import DockerRuntime

    client = docker_engine()
    try:
        runtime = DockerRuntime(client)
        spec = RunnerSpec(key="tests:cluster", code=b"x", timeout=30, scaledown_window=60)
        lacking = f"{registry.address}/minimodal/image:never-built"
        with pytest.raises(RunnerStartError, match="has no image") as info:
            runtime.start(dataclasses.replace(spec, image=lacking))
        assert lacking in str(info.value)
        assert info.value.error_type == "ImageNotFoundError" and not info.value.infrastructure  # fails the call

        down = f"127.0.0.1:{free_port()}/minimodal/image:never-built"  # nothing listens there
        with pytest.raises(RunnerStartError, match="MINIMODAL_REGISTRY") as info:
            runtime.start(dataclasses.replace(spec, image=down))
        assert info.value.infrastructure  # the platform failed: the input is queued again for another worker
        assert client.containers.list(all=True, filters={"label": "minimodal.key=tests:cluster"}) == []
    finally:
        client.close()


@pytest.mark.docker
def test_a_call_whose_image_is_not_on_the_workers_engine_fails_with_image_not_found(
    docker_user: str, docker_stack: Stack
) -> None:
    from mm_app.database import Database
    from mm_app.models import ImageRecord

    image = minimodal.Image.debian_slim().env({"MM_TEST_NONCE": uuid.uuid4().hex})
    app = minimodal.App("lost-image")
    f = app.function(image=image, serialized=True, name="variable")(fns.variable)
    with app.run():  # built on this worker's engine
        assert f.remote("MM_TEST_NONCE") is not None
    record = _record(docker_stack, docker_user, image)
    gone = f"minimodal/image:gone-{uuid.uuid4().hex[:12]}"  # as if built on another machine's engine, no registry
    db = Database(docker_stack.env["MINIMODAL_DATABASE_URL"])
    with db.write() as session:
        session.get(ImageRecord, record["image_id"]).tag = gone
    db.dispose()
    with app.run():  # the next deploy's function runs that image
        with pytest.raises(ImageNotFoundError, match="MINIMODAL_REGISTRY") as info:
            f.remote("MM_TEST_NONCE")
    assert gone in str(info.value)


def test_the_cluster_route_tells_a_joining_worker_what_the_api_uses(stack: Stack) -> None:
    reply = requests.get(
        f"{stack.url}/internal/cluster",
        headers={"Authorization": f"Bearer {stack.env['MINIMODAL_WORKER_TOKEN']}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    settings = reply.json()
    assert settings["redis_url"] == stack.env["MINIMODAL_REDIS_URL"]
    assert settings["database_url"] == stack.env["MINIMODAL_DATABASE_URL"]
    assert settings["registry"] is None
    assert (stack.home / "secret.key").read_text().strip() == settings["secret_key"]


def test_join_refuses_a_user_token_and_names_the_workers_credential(user: str, stack: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMODAL_")}
    env["MINIMODAL_HOME"] = str(tmp_path)
    joined = subprocess.run(
        [PYTHON, "-m", "minimodal", "worker", "join", "--server", stack.url, "--token", user],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert joined.returncode != 0
    assert "workers' credential" in joined.stderr and "MINIMODAL_WORKER_TOKEN" in joined.stderr
    assert not (tmp_path / "config.toml").exists()  # nothing written, no worker started


@pytest.mark.timeout(300)
def test_minimodal_up_runs_the_registry_when_configured_and_down_stops_it(tmp_path: Path) -> None:
    from mm_app import image_registry
    from tests.test_supervision import MINIMODAL, _leftovers, _stack_env

    if shutil.which(image_registry.SERVER) is None:
        missing("docker-registry is not installed (make system-deps installs it)")
    address = f"127.0.0.1:{free_port()}"
    env = {**_stack_env(tmp_path), "MINIMODAL_REGISTRY": address}
    up = subprocess.run([*MINIMODAL, "up", "--detach"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert image_registry.answers(address) and (tmp_path / "registry").is_dir()
        status = subprocess.run([*MINIMODAL, "status"], env=env, cwd=ROOT, capture_output=True, text=True)
        assert any(line.split()[:2] == ["registry", "RUNNING"] for line in status.stdout.splitlines()), status.stdout
    finally:
        down = subprocess.run([*MINIMODAL, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stderr
    assert not image_registry.answers(address)
    assert _leftovers(tmp_path) == ""


def test_image_names_say_which_registry_they_come_from_and_where_their_copy_goes() -> None:
    from workers.images import in_registry, registry_of, split_reference

    assert registry_of("127.0.0.1:5000/minimodal/image:ab") == "127.0.0.1:5000"
    assert registry_of("registry.example.com/minimodal/image:ab") == "registry.example.com"
    assert registry_of("minimodal/image:ab") is None and registry_of("python:3.11-slim") is None
    assert in_registry("127.0.0.1:5000", "python:3.11-slim") == "127.0.0.1:5000/python:3.11-slim"
    assert in_registry("127.0.0.1:5000", "other.example.com/base:1") == "other.example.com/base:1"  # not re-homed
    assert split_reference("127.0.0.1:5000/minimodal/image:ab") == ("127.0.0.1:5000/minimodal/image", "ab")
    assert split_reference("127.0.0.1:5000/base") == ("127.0.0.1:5000/base", "latest")
