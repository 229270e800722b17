"""``/ready``, ``/stats`` and ``/metrics`` on a real stack: their shape, and numbers that move as calls are made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, start_redis, start_stack, stop_process, wait_for
from tests.functions import basic


def get(stack: Stack, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(stack.url + path, headers=headers, timeout=30)


def stats(stack: Stack, token: str) -> dict[str, Any]:
    reply = get(stack, "/stats", token)
    assert reply.status_code == 200, reply.text
    return reply.json()


def settled(stack: Stack, token: str, **calls: int) -> dict[str, Any]:
    """/stats once the inputs' statuses have reached the database (the recorder writes off the call's path)."""

    seen: dict[str, Any] = {}

    def counted() -> dict[str, Any] | None:
        body = stats(stack, token)
        seen.update(body["calls"])
        return body if all(body["calls"][k] == v for k, v in calls.items()) else None

    try:
        # Late in the full suite the worker's recorder may be behind on a busy machine: give it a minute.
        return wait_for(counted, 60, f"/stats to count {calls}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it counted {seen}") from None


def test_ready_answers_200_with_every_check_when_the_stack_runs(stack: Stack) -> None:
    reply = get(stack, "/ready")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "ready"
    assert {name: check["ok"] for name, check in body["checks"].items()} == dict.fromkeys(
        ("database", "redis", "dispatcher", "workers"), True
    )
    assert body["checks"]["workers"]["alive"] >= 1
    assert 0 <= body["checks"]["dispatcher"]["heartbeat_age"] < 5


def test_ready_names_the_dispatcher_then_the_workers_then_redis_as_each_stops(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    own = start_stack(redis, tmp_path / "home", runtime="process", db=0)
    try:
        assert get(own, "/ready").status_code == 200
        stop_process(own.processes["dispatcher"])

        def failing() -> list[str]:
            reply = get(own, "/ready")
            return reply.json()["failing"] if reply.status_code == 503 else []

        assert wait_for(failing, 20, "/ready to notice the dispatcher is gone") == ["dispatcher"]
        body = get(own, "/ready").json()
        assert "dispatcher" in body["error"]["message"] and body["error"]["type"] == "ServiceError"
        assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"] and body["checks"]["workers"]["ok"]

        stop_process(own.processes["worker"])  # a worker deletes its heartbeat on shutdown
        assert wait_for(lambda: failing() == ["dispatcher", "workers"], 20, "/ready to notice the worker is gone")

        stop_process(redis.process)
        reply = get(own, "/ready")
        assert reply.status_code == 503
        body = reply.json()
        assert body["failing"] == ["redis"]  # the checks that need Redis are unknown, not failed
        assert body["checks"]["redis"]["ok"] is False and "redis" in body["error"]["message"]
        assert body["checks"]["dispatcher"]["ok"] is None and body["checks"]["workers"]["ok"] is None
        assert body["checks"]["database"]["ok"] is True
    finally:
        own.stop()
        stop_process(redis.process)


def test_stats_needs_a_valid_token(stack: Stack) -> None:
    for token in (None, "mm_not-a-token"):
        reply = get(stack, "/stats", token)
        assert reply.status_code == 401
        assert reply.json()["error"]["type"] == "AuthError"


def test_stats_counts_a_users_functions_calls_durations_and_failures_as_calls_are_made(stack: Stack, user: str) -> None:
    before = stats(stack, user)
    assert before["scope"] == "user" and before["functions"] == 0 and before["function_calls"] == 0
    assert set(before["calls"]) >= {"queued", "running", "completed", "failed", "dead_letter"}
    assert sum(before["calls"].values()) == 0
    assert [(u["name"], u["running"], u["queued"]) for u in before["users"]] == [(before["user"], 0, 0)]
    assert before["duration"]["count"] == 0 and before["duration"]["avg"] is None

    with basic.app.run():
        assert [basic.square.remote(x) for x in range(3)] == [0, 1, 4]
        failing = basic.raise_value_error.spawn("stats see this")
        with pytest.raises(ValueError):
            failing.get()

    after = settled(stack, user, completed=3, failed=1)
    assert after["functions"] == len(basic.app.registered_functions)
    assert after["function_calls"] == 4
    assert after["calls"]["queued"] == after["calls"]["running"] == after["calls"]["dead_letter"] == 0
    assert after["duration"]["count"] == 4
    assert 0 < after["duration"]["avg"] <= after["duration"]["max"]
    assert after["duration"]["p50"] <= after["duration"]["p95"] <= after["duration"]["max"]
    assert after["queued_wait"]["count"] == 4 and after["queued_wait"]["p95"] >= 0
    [failure] = after["recent_failures"]
    assert failure["call_id"] == failing.object_id
    assert failure["function"] == "raise_value_error" and "stats see this" in failure["error"]
    assert failure["user"] == after["user"] and failure["finished_at"]
    assert after["uptime"] > before["uptime"]

    def square_is_warm() -> dict[str, Any] | None:  # the worker reports its runners with its next heartbeat
        rows = [f for f in stats(stack, user)["function_list"] if f["tag"] == "square"]
        return rows[0] if rows and rows[0]["warm_runners"] else None

    square = wait_for(square_is_warm, 15, "the square runner to show as warm")
    assert square["id"].startswith("fu-") and square["in_flight"] == 0 and square["avg_run"] > 0


def test_stats_show_workers_queues_and_the_dispatcher_to_every_user(stack: Stack, user: str) -> None:
    body = stats(stack, user)
    workers = body["workers"]
    assert workers["total"] >= 1 and workers["unhealthy"] == 0
    assert workers["idle"] + workers["busy"] + workers["unhealthy"] == workers["total"]
    assert workers["capacity"] >= 4  # the test stack's worker has 4 slots
    assert workers["runtime"].get("process", 0) >= 1
    assert all(w["healthy"] and w["heartbeat_age"] < 10 and not w["draining"] for w in workers["list"])
    assert {"mm.cpu", "mm.container", "mm.build"} <= set(body["queues"])
    assert all(isinstance(depth, int) and depth >= 0 for depth in body["queues"].values())
    assert body["dispatcher"]["alive"] is True


def test_a_user_sees_only_their_own_numbers_and_an_admin_sees_everyones(stack: Stack, user: str) -> None:
    with basic.app.run():
        basic.square.remote(2)
    mine = settled(stack, user, completed=1)
    other = stack.new_user("stats-other-user")
    theirs = stats(stack, other)
    assert theirs["functions"] == 0 and sum(theirs["calls"].values()) == 0 and theirs["recent_failures"] == []
    assert [u["name"] for u in theirs["users"]] == ["stats-other-user"]

    everyone = stats(stack, stack.admin_token)
    assert everyone["scope"] == "all"
    names = {u["name"] for u in everyone["users"]}
    assert {"admin", "stats-other-user", mine["user"]} <= names
    assert everyone["functions"] >= mine["functions"] and everyone["calls"]["completed"] >= 1


def test_stats_show_a_users_running_and_queued_work_while_it_waits_on_the_quota(stack: Stack, user: str) -> None:
    name = requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {user}"}, timeout=10).json()["name"]
    reply = requests.patch(
        f"{stack.url}/v1/users/{name}",
        json={"quota": 1},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    with basic.app.run():
        calls = [basic.sleep.spawn(1.0) for _ in range(3)]

        def one_runs_two_wait() -> dict[str, Any] | None:
            body = stats(stack, user)
            [row] = body["users"]
            return body if (row["running"], row["queued"], body["calls"]["running"]) == (1, 2, 1) else None

        during = wait_for(one_runs_two_wait, 30, "one call running and two queued under quota 1")
        assert during["users"][0]["quota"] == 1 and during["users"][0]["share"] > 0
        assert during["users"][0]["fair_share"] is None  # due shares depend on others' work: admins only
        [row] = [u for u in stats(stack, stack.admin_token)["users"] if u["name"] == name]
        assert 0 < row["fair_share"] <= 1
        assert [c.get() for c in calls] == [1.0, 1.0, 1.0]
    after = settled(stack, user, completed=3, running=0, queued=0)
    assert (after["users"][0]["running"], after["users"][0]["queued"]) == (0, 0)
    assert after["duration"]["avg"] >= 1.0


def test_metrics_are_for_admins_only(stack: Stack, user: str) -> None:
    assert get(stack, "/metrics").status_code == 401
    assert get(stack, "/metrics", user).status_code == 403  # a valid token without the right


def test_metrics_parse_as_prometheus_text_and_agree_with_stats(stack: Stack, user: str) -> None:
    with basic.app.run():
        basic.square.remote(3)
        with pytest.raises(ValueError):
            basic.raise_value_error.remote("for metrics")
    settled(stack, user, completed=1, failed=1)
    everyone = stats(stack, stack.admin_token)

    reply = get(stack, "/metrics", stack.admin_token)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}

    def samples(name: str, label: str) -> dict[str, float]:
        return {s.labels[label]: s.value for s in families[name].samples}

    assert samples("minimodal_inputs", "status")["completed"] == everyone["calls"]["completed"]
    assert samples("minimodal_inputs", "status")["failed"] == everyone["calls"]["failed"]
    assert families["minimodal_functions"].samples[0].value == everyone["functions"]
    assert families["minimodal_function_calls"].type == "counter"
    assert families["minimodal_function_calls"].samples[0].value == everyone["function_calls"]
    assert samples("minimodal_user_quota", "user")["admin"] == 5
    assert sum(samples("minimodal_workers", "state").values()) == everyone["workers"]["total"]
    assert families["minimodal_worker_slots"].samples[0].value == everyone["workers"]["capacity"]
    assert set(samples("minimodal_queue_depth", "queue")) >= {"mm.cpu", "mm.container", "mm.build"}
    assert families["minimodal_dispatcher_up"].samples[0].value == 1

    latency = families["minimodal_call_latency_seconds"]
    assert latency.type == "histogram"
    for phase in ("run", "queued"):
        series = [s for s in latency.samples if s.labels["phase"] == phase]
        buckets = [s.value for s in series if s.name.endswith("_bucket")]
        [count] = [s.value for s in series if s.name.endswith("_count")]
        assert buckets == sorted(buckets), "buckets are cumulative"
        finished = sum(everyone["calls"][s] for s in ("completed", "failed", "dead_letter", "cancelled"))
        assert buckets[-1] == count and 2 <= count <= finished  # platform failures may have no run time
        assert [s.value for s in series if s.name.endswith("_sum")][0] > 0
