"""The Docker runtime against a real engine and the real base image (docker/base/build.sh builds it)."""

from __future__ import annotations

import dataclasses
import gc
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import docker
import pytest

from tests.conftest import missing, wait_for
from tests.functions import containers
from workers.runtimes.base import RunnerSpec, RunnerStartError
from workers.runtimes.docker import DEFAULT_IMAGE, DockerRunner, DockerRuntime, remove_all_containers

pytestmark = pytest.mark.docker


def connect() -> docker.DockerClient | str:
    """A client of the local engine, or why there is none."""
    with warnings.catch_warnings():
        # A failed version negotiation leaks the SDK's socket: collect it here, not during a later test.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env()
            client.ping()
            return client
        except docker.errors.DockerException as exc:
            problem = str(exc)
        gc.collect()
    return problem


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    """A client of a Docker engine that answers and has the base image."""
    client = connect()
    if isinstance(client, str):
        missing(f"no Docker engine answers ({client}); run docker/base/build.sh as root")
    try:
        client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        missing(f"the image {DEFAULT_IMAGE} does not exist; run docker/base/build.sh as root")
    yield client
    client.close()


RUNTIME_IDS: list[str] = []  # runtimes this module made; other tests' stacks may have containers up


@pytest.fixture(scope="module", autouse=True)
def no_container_is_left_behind(client: docker.DockerClient) -> Iterator[None]:
    cloudpickle.register_pickle_by_value(containers)
    yield
    cloudpickle.unregister_pickle_by_value(containers)
    left = []
    for runtime_id in RUNTIME_IDS:
        left += [c.name for c in client.containers.list(all=True, filters={"label": f"minimodal.runtime={runtime_id}"})]
        remove_all_containers(client, {"minimodal.runtime": runtime_id})
    assert left == [], f"runner containers left behind: {left}"


@pytest.fixture
def runtime(client: docker.DockerClient) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(client, startup_timeout=60)
    RUNTIME_IDS.append(runtime.id)
    yield runtime
    runtime.shutdown()


StartRunner = Callable[..., DockerRunner]


@pytest.fixture
def start(runtime: DockerRuntime) -> Iterator[StartRunner]:
    """Start a runner for a function of tests.functions.containers; every runner is stopped afterwards."""
    runners: list[DockerRunner] = []

    def start_runner(fn: Callable[..., Any], **options: Any) -> DockerRunner:
        runner = runtime.start(spec_for(fn, **options))
        assert isinstance(runner, DockerRunner)
        runners.append(runner)
        return runner

    yield start_runner
    for runner in runners:
        runner.stop()


def spec_for(fn: Callable[..., Any], *, timeout: float = 30, **options: Any) -> RunnerSpec:
    return RunnerSpec(
        key=f"tests:{fn.__name__}",
        code=cloudpickle.dumps(fn),
        timeout=timeout,
        scaledown_window=60,
        labels={"function": fn.__name__, "user": "tests"},
        **options,
    )


def payload(*args: Any, **kwargs: Any) -> bytes:
    return cloudpickle.dumps((args, kwargs))


def runner_containers(client: docker.DockerClient, runner: DockerRunner) -> list[str]:
    assert runner.container is not None
    return [c.name for c in client.containers.list(all=True, filters={"name": runner.container.name})]


def test_a_runner_returns_the_result_computed_inside_a_container(start: StartRunner) -> None:
    runner = start(containers.whoami)

    outcome = runner.call(payload(), call_id="fc-1", idx=0)

    assert outcome.ok, outcome
    where = cloudpickle.loads(outcome.data)
    assert where["dockerenv"] is True
    assert (where["uid"], where["gid"]) == (1000, 1000)
    assert where["capabilities"] == 0


def test_a_warm_runner_serves_many_inputs_from_one_container(start: StartRunner) -> None:
    runner = start(containers.add)

    outcomes = [runner.call(payload(i, b=10), call_id="fc-1", idx=i) for i in range(20)]

    assert [cloudpickle.loads(o.data) for o in outcomes] == [i + 10 for i in range(20)]
    assert runner.alive


def test_the_container_carries_the_function_limits_and_no_privileges(
    client: docker.DockerClient, start: StartRunner, runtime: DockerRuntime
) -> None:
    runner = start(containers.noop, memory=128, cpu=0.5)

    assert runner.container is not None
    attrs = client.api.inspect_container(runner.container.id)

    host = attrs["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 128 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == runtime.pids_limit
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["AutoRemove"] is False
    assert attrs["Config"]["User"] == "1000:1000"
    labels = attrs["Config"]["Labels"]
    assert labels["minimodal"] == "1"
    assert (labels["minimodal.function"], labels["minimodal.user"]) == ("noop", "tests")
    mounts = [(m["Source"], m["Destination"], m["RW"]) for m in attrs["Mounts"]]
    assert sorted(mounts) == sorted(
        [
            (str(runtime.runner_file), "/opt/mm/runner/minimodal_runner.py", False),
            (str(runtime.frames_file), "/opt/mm/runner/minimodal_frames.py", False),  # what the runner imports
            (str(runtime.sdk_dir), "/opt/mm/lib/minimodal", False),  # read-only: Dict, Queue, ... in functions
        ]
    )


def test_a_user_exception_comes_back_with_its_traceback(start: StartRunner) -> None:
    runner = start(containers.fail)

    outcome = runner.call(payload("boom"), call_id="fc-1", idx=3)

    assert not outcome.ok and not outcome.runner_lost and outcome.error_type is None
    error = cloudpickle.loads(outcome.data)
    assert isinstance(error, ValueError) and error.args == ("boom",)
    assert outcome.traceback is not None
    assert "in fail" in outcome.traceback and "ValueError: boom" in outcome.traceback
    assert runner.alive


def test_printed_text_reaches_the_log_sink_from_both_streams(start: StartRunner) -> None:
    runner = start(containers.chatter)
    logs: list[tuple[str, str]] = []

    outcome = runner.call(payload("hi"), call_id="fc-1", idx=0, on_log=lambda stream, text: logs.append((stream, text)))

    assert outcome.ok and cloudpickle.loads(outcome.data) == "hi"
    text = {stream: "".join(t for s, t in logs if s == stream) for stream in ("stdout", "stderr")}
    assert "out: hi" in text["stdout"]
    assert "err: hi" in text["stderr"]


def test_the_timeout_stops_the_call_and_its_container(client: docker.DockerClient, start: StartRunner) -> None:
    runner = start(containers.sleep, timeout=1)

    outcome = runner.call(payload(60), call_id="fc-1", idx=0)

    assert not outcome.ok
    assert outcome.error_type == "FunctionTimeoutError"
    assert outcome.runner_lost
    assert not runner.alive
    assert runner_containers(client, runner) == []


def test_a_function_over_its_memory_limit_ends_with_an_out_of_memory_message(start: StartRunner) -> None:
    runner = start(containers.hog_memory, memory=64)

    outcome = runner.call(payload(512), call_id="fc-1", idx=0)

    assert not outcome.ok
    assert outcome.error_type == "RemoteError"
    assert outcome.message is not None
    assert "out of memory" in outcome.message and "64 MiB" in outcome.message
    assert outcome.runner_lost
    assert not runner.alive


def test_os_exit_ends_the_call_with_a_remote_error_and_loses_the_runner(start: StartRunner) -> None:
    runner = start(containers.exit_hard)
    logs: list[tuple[str, str]] = []

    outcome = runner.call(
        payload(3, "last words on fd 2"), call_id="fc-1", idx=0, on_log=lambda stream, text: logs.append((stream, text))
    )

    assert not outcome.ok
    assert outcome.error_type == "RemoteError"
    assert outcome.message is not None and "exited with code 3" in outcome.message
    assert "out of memory" not in outcome.message
    assert outcome.runner_lost
    assert not runner.alive
    # What the container wrote to its own stderr (demultiplexed from the attach stream, which ends only
    # after both streams drained) reaches the log sink and the error message.
    assert "last words on fd 2" in "".join(text for stream, text in logs if stream == "stderr")
    assert "last words on fd 2" in outcome.message


def test_a_function_that_cannot_be_loaded_fails_to_start_and_leaves_no_container(
    client: docker.DockerClient, runtime: DockerRuntime
) -> None:
    spec = RunnerSpec(key="tests:broken", code=b"not a pickle", timeout=30, scaledown_window=60)

    with pytest.raises(RunnerStartError, match="could not be loaded") as info:
        runtime.start(spec)

    assert info.value.traceback is not None and "UnpicklingError" in info.value.traceback
    assert client.containers.list(all=True, filters={"label": "minimodal.key=tests:broken"}) == []


def test_a_missing_image_fails_to_start_with_a_hint(client: docker.DockerClient) -> None:
    runtime = DockerRuntime(client, image="minimodal/no-such-image:never")

    with pytest.raises(RunnerStartError, match="MINIMODAL_REGISTRY.*make docker-base") as info:
        runtime.start(spec_for(containers.noop))

    assert "minimodal/no-such-image:never" in str(info.value)
    assert info.value.error_type == "ImageNotFoundError" and not info.value.infrastructure


def test_stop_removes_the_container_and_is_safe_twice(client: docker.DockerClient, start: StartRunner) -> None:
    runner = start(containers.noop)
    assert runner_containers(client, runner) != []

    runner.stop()
    runner.stop()

    assert not runner.alive
    assert runner_containers(client, runner) == []


def test_a_call_on_a_stopped_runner_reports_a_lost_runner(start: StartRunner) -> None:
    runner = start(containers.noop)
    runner.stop()

    outcome = runner.call(payload(), call_id="fc-1", idx=0)

    assert not outcome.ok and outcome.error_type == "RemoteError" and outcome.runner_lost


def test_runtime_shutdown_removes_its_containers(client: docker.DockerClient, runtime: DockerRuntime) -> None:
    runners = [runtime.start(spec_for(containers.noop)) for _ in range(2)]

    runtime.shutdown()

    assert client.containers.list(all=True, filters={"label": f"minimodal.runtime={runtime.id}"}) == []
    assert not any(runner.alive for runner in runners)
    for runner in runners:
        runner.stop()


def test_a_blank_container_is_bound_to_the_first_user_that_loads_into_it_and_to_nobody_else(
    runtime: DockerRuntime,
) -> None:
    from workers.pool import WarmPool

    def spec(user: str) -> RunnerSpec:
        return dataclasses.replace(spec_for(containers.noop), key=f"{user}:noop", labels={"user": user})

    pool = WarmPool(runtime, reap_interval=3600, blank_runners=1)
    try:
        pool.prestart(spec("nobody"))
        wait_for(lambda: pool.blanks() == 1, 60, "a blank container")
        (blank,) = [r.container.id for b in pool._blank.values() for r in b]  # type: ignore[attr-defined]
        assert re.fullmatch(r"mm-[0-9a-f]{12}", runtime.client.containers.get(blank).name)  # nobody's yet

        def name(user: str) -> str:
            runner = pool.acquire(spec(user))
            try:
                assert runner.call(payload(), call_id="fc-t", idx=0).ok
                return runner.container.id  # type: ignore[attr-defined]
            finally:
                pool.release(runner)

        assert name("alice") == blank and pool.bound == 1  # her first call ran in the container started blank
        # Its labels stay as created (Docker's never change); its name now says whose it is.
        wait_for(lambda: runtime.client.containers.get(blank).name.startswith("mm-ualice-"), 10, "the rename")
        wait_for(lambda: pool.blanks() == 1, 60, "a new blank container")
        bobs = {name("bob"), name("bob")}
        assert blank not in bobs and name("alice") == blank
    finally:
        pool.shutdown()
