"""The Lua scripts (mm_app/lua/*.lua) on a real Redis: each loads, and each refuses bad input clearly.

A script that got a key or argument it does not expect, or none where it needs one, must answer an
error naming the script and the culprit and change nothing, never run on with a nil or a wrong value
(the silent wrong result of positional ARGV). The scheduling behaviour itself is tested through its
callers: tests/test_scheduler.py, test_caps.py, test_faults.py, test_ratelimit.py and others.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ResponseError

from mm_app import lua
from mm_app.keyspace import InflightTask, PendingEntry
from tests.conftest import ROOT, RedisServer

LUA_DB = 14  # this module's Redis database: nobody else's

TASK = asdict(InflightTask(7, "fn", "fc-1", 0, 4, "w1", 125, 128, "", 0, 1000, 1.5, "d1"))  # a ledger record

TAKE_KEYS = (
    "pending",
    "pending_users",
    "pending_inputs",
    "running",
    "quota",
    "lent",
    "function_limit",
    "function_running",
    "function_needs",
    "workers",
    "workers_seen",
    "worker_used",
    "worker_target",
    "inflight",
    "scale_events",
    "dispatch_log",
    "dispatch_stats",
)

# A valid call of every script: keys by name, arguments by name, data (ARGV[2...]).
VALID: dict[str, tuple[dict[str, str], dict[str, Any], list[Any]]] = {
    "enqueue": (
        {n: f"t:{n}" for n in (*TAKE_KEYS, "wake", "inputs", "leader")},  # the take step's keys and its own
        {
            "user_id": 7,
            "entry": {"call_id": "fc-1", "function_id": "fn", "start": 0, "end": 2},
            "ttl": 60,
            "dead_after": 30.0,
            "front": False,
            "direct": {},
        },
        ["0", b"\x80\x05payload", "1", b"\x80\x05other"],
    ),
    "take": (
        {n: f"t:{n}" for n in TAKE_KEYS},
        {
            "user_id": 7,
            "task_id": "t1",
            "dispatcher_id": "d1",
            "budget": -1,
            "held": {},
            "default_quota": 4,
            "target_us": 100_000,
            "max_inputs": 10,
            "overhead_us": 2000,
            "min_slots": 1,
            "log_length": 100,
            "events_length": 100,
            "dead_after": 30.0,
            "function_stats_prefix": "t:stats:",
        },
        [],
    ),
    "hold": (
        {n: f"t:{n}" for n in ("inflight", "running", "function_running", "worker_used")},
        {"task_id": "retry-1", "task": TASK},
        [],
    ),
    "finish": (
        {n: f"t:{n}" for n in ("inflight", "running", "function_running", "worker_used", "function_stats", "wake")},
        {"task_id": "t1", "mean_run_us": 500, "ewma_weight": 0.2},
        [],
    ),
    "reclaim": (
        {
            n: f"t:{n}"
            for n in (
                "inflight",
                "running",
                "function_running",
                "worker_used",
                "pending",
                "pending_users",
                "pending_inputs",
                "wake",
                "dispatch_stats",
            )
        },
        {"task_id": "t1", "user_id": 7, "counter": "reclaimed", "runs": [[1, 3]]},
        [],
    ),
    "lease_renew": ({"lease": "t:lease"}, {"holder": "d1", "ttl_ms": 5000}, []),
    "lease_release": ({"lease": "t:lease"}, {"holder": "d1"}, []),
    "rate_limit": ({"limit": "t:rate"}, {"interval_us": 10_000.0, "burst_us": 50_000.0}, []),
    "publish": (
        {"outputs": "t:outputs", "done": "t:done"},
        {"ttl": 60, "outputs": [{"index": 0, "size": 4}, {"index": 1, "size": 2}]},
        ["idx", "0", "data", b"\x00\xff", "idx", "1"],
    ),
    "beat": (
        {n: f"t:{n}" for n in ("workers", "workers_seen", "heartbeat", "wake")},
        {"worker_id": "w1", "capacity": '{"id": "w1"}', "info": "{}", "ttl": 60},
        [],
    ),
    "shrink": (
        {n: f"t:{n}" for n in ("worker_target", "scale_events", "dispatch_stats")},
        {"worker_id": "w1", "expected": 3, "target": 1, "event": "{}", "length": 10},
        [],
    ),
}


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis(port=redis_server.port, db=LUA_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _state(r: Redis) -> dict[bytes, bytes | None]:
    """Every key's serialized value: what a refused call must leave as it was."""
    return {key: r.dump(key) for key in sorted(r.keys("*"))}


def _seed(r: Redis) -> None:
    """Some state for the scripts to change if they ran on: a ledger record, a queue, a lease, a target."""
    r.hset("t:inflight", "t1", json.dumps(TASK))
    r.rpush("t:pending", PendingEntry("fc-0", "fn", 0, 1).encode())
    r.set("t:lease", "d1")
    r.hset("t:worker_target", "w1", 3)
    r.hset("t:function_needs", "fn", '{"cpu": 125, "memory": 128, "gpu": "", "gpu_count": 0, "runtime": "process"}')


def _refused(r: Redis, name: str, keys: dict[str, str], args: dict[str, Any], data: list[Any], match: str) -> None:
    before = _state(r)
    with pytest.raises(ResponseError, match=re.escape(f"{name}: ") + match):
        lua.Script(r, name)(keys, args, data)
    assert _state(r) == before, f"{name} changed Redis although it refused the call"


def _wrong_type(value: Any) -> Any:
    return 5 if isinstance(value, str) else "five"


def test_every_script_has_a_valid_call_here() -> None:
    assert sorted(VALID) == lua.names()


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_script_loads_into_redis_and_runs_a_valid_call(r: Redis, name: str) -> None:
    # Given the full text Redis runs (the libraries, then the script)
    sha = r.script_load(lua.source(name))
    assert r.script_exists(sha) == [True]
    _seed(r)
    keys, args, data = VALID[name]
    # When it runs with what it documents, then it answers (no error)
    lua.Script(r, name)(keys, args, data)


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_script_refuses_missing_or_malformed_keys_and_arguments(r: Redis, name: str) -> None:
    _seed(r)
    keys, args, data = VALID[name]
    sha = r.script_load(lua.source(name))
    key_list = list(keys.values())

    # No ARGV at all, or an ARGV[1] that is not a JSON object (the old positional calling convention)
    for argv in ([], ["not json"], ["[1, 2]"], [str(args.get("user_id", "x"))]):
        before = _state(r)
        with pytest.raises(ResponseError, match=re.escape(f"{name}: ") + "ARGV"):
            r.evalsha(sha, len(key_list), *key_list, *argv)
        assert _state(r) == before
    # KEYS and the names of "keys" that do not match
    with pytest.raises(ResponseError, match=re.escape(f"{name}: ") + "got 0 KEYS"):
        r.evalsha(sha, 0, json.dumps({"keys": list(keys), **args}), *data)
    with pytest.raises(ResponseError, match=re.escape(f"{name}: ") + 'ARGV\\[1\\] has no "keys"'):
        r.evalsha(sha, len(key_list), *key_list, json.dumps(args), *data)

    for key in keys:
        _refused(r, name, {k: v for k, v in keys.items() if k != key}, args, data, f'missing key "{key}"')
    _refused(r, name, {**keys, "extra": "t:extra"}, args, data, 'unknown key "extra"')
    for arg, value in args.items():
        _refused(r, name, keys, {a: v for a, v in args.items() if a != arg}, data, f'arguments: missing "{arg}"')
        _refused(r, name, keys, {**args, arg: _wrong_type(value)}, data, f'arguments: "{arg}" must be')
        _refused(r, name, keys, {**args, arg: None}, data, f'arguments: "{arg}" must be .*, got null')
        if isinstance(value, int) and not isinstance(value, bool):
            _refused(r, name, keys, {**args, arg: value + 0.5}, data, f'arguments: "{arg}" must be integer')
    _refused(r, name, keys, {**args, "extra": 1}, data, 'arguments: unknown "extra"')


def test_enqueue_refuses_an_empty_run_a_bad_entry_and_unpaired_payloads(r: Redis) -> None:
    keys, args, data = VALID["enqueue"]
    entry = args["entry"]
    _refused(r, "enqueue", keys, {**args, "entry": {**entry, "end": 0}}, data, r"entry: an empty run \[0, 0\)")
    _refused(r, "enqueue", keys, {**args, "entry": {**entry, "start": "0"}}, data, 'entry: "start" must be integer')
    _refused(r, "enqueue", keys, {**args, "entry": {**entry, "stop": 2}}, data, 'entry: unknown "stop"')
    _refused(r, "enqueue", keys, args, data[:-1], "ARGV\\[2...\\] must be pairs")
    _refused(r, "enqueue", keys, {**args, "direct": {"task_id": "t1"}}, data, 'direct: missing "')


def test_take_refuses_a_pending_entry_that_is_not_a_json_record(r: Redis) -> None:
    # Given a pending list holding an entry in the old "|"-joined shape (no compatibility is kept)
    keys, args, data = VALID["take"]
    _seed(r)
    r.delete("t:pending")
    r.rpush("t:pending", "fc-0|fn|0|1")
    # Then take says so instead of dispatching something made up
    _refused(r, "take", keys, args, data, "pending entry is not JSON: fc-0\\|fn\\|0\\|1")
    r.delete("t:pending")
    r.rpush("t:pending", json.dumps({"call_id": "fc-0", "function_id": "fn", "start": 0}))
    _refused(r, "take", keys, args, data, 'pending entry: missing "end"')


def test_finish_and_reclaim_refuse_a_ledger_record_that_is_not_a_json_record(r: Redis) -> None:
    r.hset("t:inflight", "t1", "7|fn|fc-1|0|4|w1|125|128||0|1000|1.5|d1")
    for name in ("finish", "reclaim"):
        keys, args, data = VALID[name]
        _refused(r, name, keys, args, data, "ledger record t1 is not JSON")


def test_reclaim_refuses_another_users_task_and_runs_outside_the_task(r: Redis) -> None:
    _seed(r)
    keys, args, data = VALID["reclaim"]
    _refused(r, "reclaim", keys, {**args, "user_id": 8}, data, "task t1 is not of user 8")
    _refused(r, "reclaim", keys, {**args, "runs": [[3, 9]]}, data, r"runs\[1\] \[3,9\] is outside")
    _refused(r, "reclaim", keys, {**args, "runs": [[2, 2]]}, data, r"runs\[1\] must be \[start, end\]")
    _refused(r, "reclaim", keys, {**args, "runs": [[1]]}, data, r"runs\[1\] must be \[start, end\]")


def test_hold_refuses_a_task_record_with_a_field_missing_or_unknown(r: Redis) -> None:
    keys, args, data = VALID["hold"]
    task = args["task"]
    _refused(
        r, "hold", keys, {**args, "task": {k: v for k, v in task.items() if k != "cpu"}}, data, 'task: missing "cpu"'
    )
    _refused(r, "hold", keys, {**args, "task": {**task, "gpus": 1}}, data, 'task: unknown "gpus"')
    _refused(r, "hold", keys, {**args, "task_id": ""}, data, "task_id is empty")


def test_hold_reserves_once_what_release_frees(r: Redis) -> None:
    # Given a retry held twice under one id (the second is refused), then finished
    keys, args, data = VALID["hold"]
    assert lua.Script(r, "hold")(keys, args, data) == 1
    assert lua.Script(r, "hold")(keys, args, data) == 0
    assert r.hgetall("t:worker_used") == {b"w1|slots": b"1", b"w1|cpu": b"125", b"w1|memory": b"128"}
    finish_keys, _, _ = VALID["finish"]
    assert lua.Script(r, "finish")(finish_keys, {"task_id": "retry-1", "mean_run_us": 0, "ewma_weight": 0.2}) == 1
    # Then nothing stays reserved
    assert r.hlen("t:worker_used") == 0 and r.hlen("t:running") == 0 and r.hlen("t:inflight") == 0


def test_publish_refuses_sizes_that_do_not_add_up_to_the_data(r: Redis) -> None:
    keys, args, data = VALID["publish"]
    _refused(r, "publish", keys, args, data[:-2], "the outputs. sizes add up to 6 but ARGV\\[2...\\] holds 4")
    bad = {**args, "outputs": [{"index": 0, "size": 3}, {"index": 1, "size": 3}]}
    _refused(r, "publish", keys, bad, data, r"outputs\[1\]: size must be an even number")
    _refused(r, "publish", keys, {**args, "outputs": [{"index": "0", "size": 6}]}, data, 'outputs\\[1\\]: "index"')


def test_finish_refuses_an_ewma_weight_outside_0_to_1(r: Redis) -> None:
    keys, args, data = VALID["finish"]
    _refused(r, "finish", keys, {**args, "ewma_weight": 2}, data, "ewma_weight must be in")


def test_no_python_file_holds_lua() -> None:
    # Lua lives in mm_app/lua/*.lua: a Python string with Lua in it is found by its calls into Redis
    found = subprocess.run(
        [
            "git",
            "grep",
            "--untracked",
            "-n",
            "-E",
            r"redis\.(p?call|error_reply|status_reply)\(",
            "--",
            "*.py",
            ":!tests/test_lua.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 1 and found.stdout == "", found.stdout
