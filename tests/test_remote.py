"""The core path end to end: SDK -> API -> Redis -> dispatcher -> Celery worker -> runner -> back."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

import minimodal
from minimodal.exception import InvalidError, RemoteError
from tests.conftest import Stack, wait_for
from tests.functions import basic


def test_local_runs_in_this_process(user: str) -> None:
    assert basic.square.local(3) == 9
    assert basic.pid.local() == os.getpid()


def test_remote_returns_the_value_computed_on_a_worker(user: str) -> None:
    with basic.app.run():
        assert basic.square.remote(4) == 16
        assert basic.add.remote(2, b=5) == 7
        assert basic.pid.remote() != os.getpid()
        assert basic.is_remote.remote()[0] is False


def test_a_netrc_entry_for_the_server_does_not_replace_the_token(
    user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a netrc file with an entry for the API's host (requests would send it as Basic auth)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    # When a call is made in a thread with a fresh HTTP session, Then the bearer token still authenticates it
    with basic.app.run():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert pool.submit(basic.square.remote, 3).result() == 9


def test_spawn_then_get_and_gather(user: str) -> None:
    with basic.app.run():
        fc = basic.square.spawn(5)
        assert fc.get() == 25
        assert fc.object_id.startswith("fc-")
        assert minimodal.FunctionCall.from_id(fc.object_id).get() == 25
        assert minimodal.FunctionCall.gather(basic.square.spawn(6), basic.square.spawn(7)) == [36, 49]


def test_map_returns_results_in_input_order(user: str) -> None:
    with basic.app.run():
        assert list(basic.square.map(range(10))) == [x * x for x in range(10)]
        assert list(basic.add.starmap([(1, 2), (3, 4)])) == [3, 7]
        assert list(basic.add.map([1, 2], [10, 20])) == [11, 22]
        assert list(basic.add.map([1, 2], kwargs={"b": 100})) == [101, 102]
        assert list(basic.square.map([])) == []


def test_map_with_unordered_outputs_returns_every_result(user: str) -> None:
    with basic.app.run():
        assert sorted(basic.sleep.map([0.3, 0.0, 0.1], order_outputs=False)) == [0.0, 0.1, 0.3]


def test_remote_reraises_the_original_exception_type_with_the_remote_traceback(user: str) -> None:
    with basic.app.run():
        with pytest.raises(ValueError, match="bad input") as info:
            basic.raise_value_error.remote("bad input")
        assert any("Remote traceback" in note and "raise_value_error" in note for note in info.value.__notes__)
        with pytest.raises(basic.CustomError, match="mine"):
            basic.raise_custom.remote("mine")


def test_an_unpicklable_remote_exception_becomes_remote_error_with_the_traceback(user: str) -> None:
    with basic.app.run():
        with pytest.raises(RemoteError) as info:
            basic.raise_unpicklable.remote("no pickle")
        assert "UnpicklableError" in str(info.value)
        assert info.value.traceback and "raise_unpicklable" in info.value.traceback


def test_map_return_exceptions_yields_exception_objects(user: str) -> None:
    with basic.app.run():
        results = list(basic.raise_value_error.map(["a", "b"], return_exceptions=True))
        assert [type(r) for r in results] == [ValueError, ValueError]
        assert [str(r) for r in results] == ["a", "b"]
        with pytest.raises(ValueError):
            list(basic.raise_value_error.map(["a"]))


def test_get_with_a_timeout_raises_the_builtin_timeout_error_when_not_ready(user: str) -> None:
    with basic.app.run():
        fc = basic.sleep.spawn(2)
        with pytest.raises(TimeoutError):
            fc.get(timeout=0)
        with pytest.raises(TimeoutError):
            fc.get(timeout=0.2)
        assert fc.get(timeout=30) == 2


def test_calling_remote_outside_a_running_app_is_a_clear_error(user: str) -> None:
    with pytest.raises(InvalidError, match="app.run"):
        basic.square.remote(2)


def test_a_runner_stays_warm_between_calls(user: str) -> None:
    with basic.app.run():
        first = basic.pid.remote()
        assert [basic.pid.remote() for _ in range(5)] == [first] * 5


class _Plant:
    """Unpickling this appends the unpickling process's pid to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"import os; open({self.path!r}, 'a').write(str(os.getpid()) + chr(10))",))


def test_only_the_runner_unpickles_arguments_never_the_control_plane(user: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "unpickled-by"
    with basic.app.run():
        runner_pid = basic.pid_with.remote(_Plant(str(marker)))
    assert marker.read_text().split() == [str(runner_pid)]


def test_every_input_of_a_batched_map_is_recorded_completed(stack, user: str) -> None:  # type: ignore[no-untyped-def]
    import requests

    from tests.conftest import wait_for

    with basic.app.run():
        list(basic.square.map(range(5)))  # the function's speed is now known: the next map is batched
        fc_results = list(basic.square.map(range(300)))
        assert fc_results == [x * x for x in range(300)]
        reply = requests.get(f"{stack.url}/v1/apps", headers={"Authorization": f"Bearer {user}"}, timeout=10)
        assert reply.ok

    def statuses() -> dict:  # type: ignore[type-arg]
        from sqlalchemy import create_engine, text

        engine = create_engine(stack.env["MINIMODAL_DATABASE_URL"])
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "select i.status, count(*) from inputs i join calls c on c.id = i.call_id "
                    "where c.num_inputs = 300 group by i.status"
                )
            ).all()
        engine.dispose()
        return dict(rows)

    assert wait_for(lambda: statuses() == {"completed": 300}, 15, "all 300 inputs recorded completed")


def test_failures_inside_a_batched_map_end_alone_and_in_order(user: str) -> None:
    with basic.app.run():
        list(basic.fails_on_sevens.map(range(3)))  # the function's speed is now known: the next map is batched
        results = list(basic.fails_on_sevens.map(range(400), return_exceptions=True))
    assert len(results) == 400
    for x, result in enumerate(results):
        if x % 7 == 3:
            assert isinstance(result, ValueError) and str(result) == f"input {x}"
        else:
            assert result == x


def test_a_cold_start_is_recorded_as_the_container_start_phase(stack, user: str) -> None:  # type: ignore[no-untyped-def]
    import uuid

    import requests
    from prometheus_client.parser import text_string_to_metric_families
    from sqlalchemy import create_engine, text

    from tests.conftest import wait_for

    app = minimodal.App("cold")
    namespace: dict = {}  # type: ignore[type-arg]
    exec(f"def fresh():\n    return {uuid.uuid4().hex!r}", namespace)  # new code: no warm runner has it
    fresh = app.function(serialized=True)(namespace["fresh"])
    with app.run():
        first, second = fresh.spawn(), None
        first.get(timeout=60)
        second = fresh.spawn()
        second.get(timeout=60)

    def startups() -> list:  # type: ignore[type-arg]
        engine = create_engine(stack.env["MINIMODAL_DATABASE_URL"])
        with engine.connect() as connection:
            rows = connection.execute(
                text("select call_id, startup, status from inputs where call_id in (:a, :b)"),
                {"a": first.object_id, "b": second.object_id},
            ).all()
        engine.dispose()
        return rows

    rows = wait_for(lambda: (r := startups()) and all(s == "completed" for _, _, s in r) and r, 15, "both recorded")
    by_call = {call: startup for call, startup, _ in rows}
    assert by_call[first.object_id] is not None and by_call[first.object_id] > 0  # it waited for a runner to start
    assert by_call[second.object_id] is None  # the runner was warm
    page = requests.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=10)
    samples = {
        (s.name, s.labels.get("phase")): s.value
        for family in text_string_to_metric_families(page.text)
        for s in family.samples
    }
    assert samples[("minimodal_call_latency_seconds_count", "container_start")] >= 1
    assert samples[("minimodal_call_latency_seconds_sum", "container_start")] > 0


def _started_at(pid: int) -> float:
    """When process ``pid`` started (epoch seconds, to the kernel's clock tick)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
    boot = next(
        int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def test_a_new_users_first_call_runs_in_a_runner_started_before_the_call(stack: Stack, user: str) -> None:
    # The worker keeps blank runners (started, no function loaded): the first call of a user who never
    # ran anything loads its function into one of them instead of starting a process.
    wait_for(lambda: all(w.get("blank", 0) >= 1 for w in stack.workers()), 30, "a blank runner on the worker")
    submitted = time.time()
    time.sleep(0.05)  # more than the kernel's clock tick (a process start time's precision)
    with basic.app.run():
        runner = basic.pid.remote()
    assert _started_at(runner) < submitted
