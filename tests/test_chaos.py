"""Processes die and come back; no accepted call is lost. Each test gets its own stack."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import RedisServer, Stack, start_redis, start_stack, stop_process, use_stack, wait_for
from tests.functions import basic, faults

pytestmark = pytest.mark.chaos


@pytest.fixture
def chaos_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    redis_server.client.flushdb()  # database 2 is this test's alone
    stack = start_stack(redis_server, tmp_path / "home", runtime="process", db=2)
    try:
        yield stack
    finally:
        stack.stop()
        redis_server.client.connection_pool.reset()


def _restart(stack: Stack, name: str) -> None:
    process = stack.processes[name]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stack.spawn(name, name)


def _healthy(stack: Stack) -> bool:
    try:
        return requests.get(stack.url + "/health", timeout=1).ok
    except requests.RequestException:
        return False


def test_clients_waiting_through_an_api_restart_still_get_their_results(
    chaos_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stack(chaos_stack, request, monkeypatch)
    results: dict[str, object] = {}
    with basic.app.run():
        spawned = basic.sleep.spawn(2)

        def wait_on_spawned() -> None:
            results["spawned"] = spawned.get(timeout=90)

        def remote_call() -> None:
            results["remote"] = basic.sleep.remote(2.5)

        waiters = [threading.Thread(target=wait_on_spawned), threading.Thread(target=remote_call)]
        for thread in waiters:
            thread.start()
        wait_for(lambda: chaos_stack.log("api").count("/calls") >= 2, 10, "both clients to be waiting")
        _restart(chaos_stack, "api")
        wait_for(lambda: _healthy(chaos_stack), 30, "the API to come back")
        for thread in waiters:
            thread.join(90)
        assert results == {"spawned": 2, "remote": 2.5}
        assert basic.square.remote(3) == 9


def test_a_map_goes_on_through_an_api_restart(
    chaos_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stack(chaos_stack, request, monkeypatch)
    with basic.app.run():
        results = []
        for i, value in enumerate(basic.sleep.map([0.02] * 200)):
            results.append(value)
            if i == 50:
                _restart(chaos_stack, "api")
        assert results == [0.02] * 200


def _set_quota(stack: Stack, name: str, quota: int) -> None:
    reply = requests.patch(
        f"{stack.url}/v1/users/{name}",
        json={"quota": quota},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def _statuses(stack: Stack, token: str, call_ids: list[str]) -> list[str]:
    out = []
    for call_id in call_ids:
        reply = requests.get(
            f"{stack.url}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        out += [s for s, n in reply["statuses"].items() for _ in range(n)]
    return out


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_call_has_its_calls_run_elsewhere(
    chaos_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = use_stack(chaos_stack, request, monkeypatch)
    me = requests.get(f"{chaos_stack.url}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    _set_quota(chaos_stack, me["name"], 16)
    chaos_stack.spawn("worker2", "worker")
    wait_for(lambda: len(chaos_stack.workers()) == 2, 60, "two workers")
    with basic.app.run():
        calls = [basic.sleep.spawn(1.0) for _ in range(50)]
        wait_for(
            lambda: _statuses(chaos_stack, token, [c.object_id for c in calls]).count("completed") >= 4,
            60,
            "the first calls to finish on both workers",
        )
        process = chaos_stack.processes["worker"]
        os.killpg(process.pid, signal.SIGKILL)  # mid-call: it holds up to 4 running inputs
        process.wait()
        assert [fc.get(timeout=240) for fc in calls] == [1.0] * 50
    statuses = wait_for(
        lambda: (s := _statuses(chaos_stack, token, [c.object_id for c in calls])).count("completed") == 50 and s,
        60,
        "every call to be recorded completed",
    )
    assert len(statuses) == 50  # as many terminal statuses as calls submitted: none lost, none doubled


@pytest.mark.timeout(300)
def test_a_worker_whose_runtime_fails_trips_its_breaker_and_calls_flow_to_the_healthy_one(
    chaos_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stack(chaos_stack, request, monkeypatch)
    chaos_stack.spawn(
        "broken",
        "worker",
        extra_env={"MINIMODAL_RUNNER_PYTHON": "/nonexistent/python3", "MINIMODAL_BREAKER_COOLDOWN": "600"},
    )
    wait_for(lambda: len(chaos_stack.workers()) == 2, 60, "two workers")
    with basic.app.run():
        # Inputs long enough to fill the healthy worker's slots, so that best fit spills some onto the broken
        # one whatever the timing (no-ops finish before the next is placed, and the fuller worker wins)
        results = list(basic.sleep.map([0.1] * 40))
    assert results == [0.1] * 40
    broken = wait_for(
        lambda: [w for w in chaos_stack.workers() if w.get("breaker") == "open"],
        30,
        "the broken worker to report its open breaker",
    )
    assert len(broken) == 1
    assert "circuit breaker closed -> open" in chaos_stack.log("broken")


@pytest.fixture
def persistent_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack on its own Redis with an append-only file, as `minimodal up` starts it."""
    server = start_redis(tmp_path / "redis", extra=["--appendonly", "yes", "--appendfsync", "always"])
    stack = start_stack(server, tmp_path / "home", runtime="process", db=0)
    try:
        yield stack
    finally:
        stack.stop()
        stop_process(stack.redis.process)


@pytest.mark.timeout(300)
def test_a_map_goes_on_through_a_redis_and_dispatcher_restart(
    persistent_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_stack(persistent_stack, request, monkeypatch)
    with basic.app.run():
        results = []
        for i, value in enumerate(basic.sleep.map([0.02] * 200)):
            results.append(value)
            if i == 40:
                old = persistent_stack.redis
                stop_process(old.process)  # SIGTERM: Redis writes its append-only file and exits
                persistent_stack.redis = start_redis(
                    tmp_path / "redis",
                    port=old.port,
                    fresh=False,
                    extra=["--appendonly", "yes", "--appendfsync", "always"],
                )
                _restart(persistent_stack, "dispatcher")
        assert results == [0.02] * 200


@pytest.mark.timeout(300)
def test_a_retry_waiting_out_its_backoff_on_a_worker_that_dies_runs_elsewhere(
    chaos_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token = use_stack(chaos_stack, request, monkeypatch)
    chaos_stack.spawn("worker2", "worker")
    wait_for(lambda: len(chaos_stack.workers()) == 2, 60, "two workers")
    with faults.app.run():
        fc = faults.fails_first_then_waits.spawn(str(tmp_path / "count"))

        def first_attempt() -> dict | None:
            reply = requests.get(
                f"{chaos_stack.url}/v1/calls/{fc.object_id}/attempts",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()
            return reply["attempts"][0] if reply["attempts"] else None

        attempt = wait_for(first_attempt, 30, "the first attempt to fail")
        assert attempt["status"] == "failed"
        # The retry waits 6 s on the worker that ran the first attempt: kill that worker now.
        (name,) = [n for n, p in chaos_stack.processes.items() if f"-{p.pid}-" in attempt["worker"]]
        os.killpg(chaos_stack.processes[name].pid, signal.SIGKILL)
        chaos_stack.processes[name].wait()
        assert fc.get(timeout=120) == "ok"
    assert (tmp_path / "count").read_text() == "2"
