"""Retries with backoff, attempts on record, the dead-letter queue, idempotent outputs."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import requests

import minimodal
from minimodal.exception import FunctionTimeoutError, InvalidError
from minimodal.retries import JITTER
from mm_app import keyspace
from tests.conftest import ROOT, Stack, wait_for
from tests.functions import faults


def _get(stack: Stack, token: str, path: str) -> dict:
    reply = requests.get(stack.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _attempts(stack: Stack, token: str, call_id: str, count: int) -> list[dict]:
    """The call's attempts once ``count`` are recorded (the worker records them off the call's path)."""
    return wait_for(
        lambda: (a := _get(stack, token, f"/v1/calls/{call_id}/attempts")["attempts"]) and len(a) >= count and a,
        10,
        f"{count} attempts on record",
    )


def test_a_function_that_fails_twice_then_succeeds_returns_its_value(stack: Stack, user: str, tmp_path: Path) -> None:
    with faults.app.run():
        fc = faults.flaky.spawn(str(tmp_path / "count"), 2)
        assert fc.get(timeout=60) == "ok on attempt 3"
    attempts = _attempts(stack, user, fc.object_id, 3)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "failed"), (3, "completed")]
    assert attempts[0]["error"] == "RuntimeError('attempt 1 fails')"
    assert all(a["worker"] for a in attempts)
    starts = [datetime.fromisoformat(a["started_at"]).timestamp() for a in attempts]
    ends = [datetime.fromisoformat(a["finished_at"]).timestamp() for a in attempts]
    gaps = [starts[1] - ends[0], starts[2] - ends[1]]
    assert gaps[0] >= 0.5 * (1 - JITTER) - 0.05  # initial_delay, less its jitter
    assert gaps[1] > gaps[0]  # backoff_coefficient 2: the second wait is about twice the first
    assert _get(stack, user, f"/v1/calls/{fc.object_id}")["statuses"] == {"completed": 1}


def test_an_always_failing_call_ends_in_the_dead_letter_queue_and_a_retry_completes_it(
    stack: Stack, user: str, tmp_path: Path
) -> None:
    flag, counter = tmp_path / "flag", tmp_path / "count"
    with faults.app.run():
        fc = faults.unless_flag.spawn(str(flag), str(counter))
        with pytest.raises(ValueError, match="flag file is missing"):
            fc.get(timeout=60)
        assert counter.read_text() == "3"  # max_retries=2: three attempts
        wait_for(
            lambda: _get(stack, user, f"/v1/calls/{fc.object_id}")["statuses"] == {"dead_letter": 1},
            10,
            "the dead_letter status",
        )
        [letter] = wait_for(lambda: _get(stack, user, "/dead-letter-queue")["items"], 10, "the dead letter")
        assert (letter["call_id"], letter["index"], letter["attempts"]) == (fc.object_id, 0, 3)
        assert "flag file is missing" in letter["traceback"]
        flag.touch()  # the second time through, it succeeds
        env = {**stack.env, "MINIMODAL_TOKEN": user}
        retried = subprocess.run(
            [sys.executable, "-m", "minimodal", "dlq", "retry", str(letter["id"])],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert retried.returncode == 0, retried.stderr
        assert minimodal.FunctionCall.from_id(fc.object_id).get(timeout=60) == "ran with the flag"
    wait_for(
        lambda: _get(stack, user, f"/v1/calls/{fc.object_id}")["statuses"] == {"completed": 1},
        10,
        "the completed status",
    )
    assert _get(stack, user, "/dead-letter-queue")["items"] == []
    assert len(_attempts(stack, user, fc.object_id, 4)) == 4
    listed = subprocess.run(
        [sys.executable, "-m", "minimodal", "dlq", "list", "--state", "all"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"{fc.object_id}[0]" in listed.stdout and "retried" in listed.stdout


def test_a_dead_letter_cannot_be_retried_twice_or_by_another_user(stack: Stack, user: str, tmp_path: Path) -> None:
    with faults.app.run():
        fc = faults.unless_flag.spawn(str(tmp_path / "no-flag"), str(tmp_path / "count"))
        with pytest.raises(ValueError):
            fc.get(timeout=60)
    [letter] = wait_for(lambda: _get(stack, user, "/dead-letter-queue")["items"], 10, "the dead letter")
    other = stack.new_user("dlq-intruder")
    reply = requests.post(
        f"{stack.url}/dead-letter-queue/{letter['id']}/retry", headers={"Authorization": f"Bearer {other}"}, timeout=10
    )
    assert reply.status_code == 404
    assert _get(stack, other, "/dead-letter-queue")["items"] == []
    first = requests.post(
        f"{stack.url}/dead-letter-queue/{letter['id']}/retry", headers={"Authorization": f"Bearer {user}"}, timeout=10
    )
    assert first.status_code == 200
    again = requests.post(
        f"{stack.url}/dead-letter-queue/{letter['id']}/retry", headers={"Authorization": f"Bearer {user}"}, timeout=10
    )
    assert again.status_code == 400 and "retried already" in again.json()["error"]["message"]


def test_a_timeout_counts_as_a_failed_attempt(stack: Stack, user: str) -> None:
    with faults.app.run():
        fc = faults.too_slow.spawn(5)
        with pytest.raises(FunctionTimeoutError):
            fc.get(timeout=60)
    attempts = _attempts(stack, user, fc.object_id, 2)
    assert [a["status"] for a in attempts] == ["failed", "failed"]
    assert all("timeout" in a["error"] for a in attempts)


def test_a_failure_without_retries_is_failed_not_dead_lettered(stack: Stack, user: str) -> None:
    with faults.app.run():
        fc = faults.fails_once_without_retries.spawn()
        with pytest.raises(ValueError):
            fc.get(timeout=30)
    wait_for(lambda: _get(stack, user, f"/v1/calls/{fc.object_id}")["statuses"] == {"failed": 1}, 10, "failed")


def test_a_duplicate_run_never_replaces_a_published_output(stack: Stack) -> None:
    from minimodal import protocol
    from mm_app.payloads import Payloads

    payloads = Payloads(stack.redis.client, ttl=60)
    first = payloads.put_output("fc-dup", {protocol.OUT_INDEX: 0, protocol.OUT_STATUS: "completed", "data": b"one"})
    second = payloads.put_output("fc-dup", {protocol.OUT_INDEX: 0, protocol.OUT_STATUS: "completed", "data": b"two"})
    assert first is not None and second is None
    [(_, fields)] = stack.redis.client.xrange(keyspace.outputs_key("fc-dup"))
    assert fields[b"data"] == b"one"


def test_a_batch_of_outputs_is_published_in_order_and_each_input_once(stack: Stack) -> None:
    from minimodal import protocol
    from mm_app.payloads import Payloads

    payloads = Payloads(stack.redis.client, ttl=60)
    payloads.put_output("fc-batch", {protocol.OUT_INDEX: 1, protocol.OUT_STATUS: "completed", "data": b"first"})
    envelopes = [
        {protocol.OUT_INDEX: i, protocol.OUT_STATUS: "failed" if i == 2 else "completed", "data": b"x%d" % i}
        for i in (0, 1, 2)
    ]
    entries = payloads.put_outputs("fc-batch", envelopes)
    assert entries[0] is not None and entries[1] is None and entries[2] is not None  # 1 was published already
    published = stack.redis.client.xrange(keyspace.outputs_key("fc-batch"))
    assert [(f[b"idx"], f[b"data"], f[b"status"]) for _, f in published] == [
        (b"1", b"first", b"completed"),
        (b"0", b"x0", b"completed"),
        (b"2", b"x2", b"failed"),
    ]
    assert [entry for entry, _ in published[1:]] == [e.encode() for e in (entries[0], entries[2])]


def test_retry_options_are_checked() -> None:
    with pytest.raises(InvalidError, match="max_retries"):
        minimodal.Retries(max_retries=-1)
    with pytest.raises(InvalidError, match="max_delay"):
        minimodal.Retries(max_retries=1, max_delay=600)
    with pytest.raises(InvalidError, match="retries="):
        minimodal.App("x").function(retries="3")(faults.flaky.local)
