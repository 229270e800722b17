"""Schedules through real Celery beat (RedBeat): on time, one leader, stopped by `app stop`, rebuilt after a flush.

This module has its own Redis and stack: it flushes Redis, which no other test's stack could survive.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

import minimodal
from minimodal._client import Client
from minimodal.exception import InvalidError
from tests.conftest import ROOT, Stack, start_redis, start_stack, stop_process, use_stack, wait_for
from tests.functions import scheduled

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def beat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis = start_redis(tmp_path_factory.mktemp("beat-redis"))
    try:
        stack = start_stack(redis, tmp_path_factory.mktemp("beat-home"), runtime="process", db=0)
        try:
            stack.spawn("beat", "beat")
            stack.spawn("beat2", "beat")  # a second beat: RedBeat's lock keeps it standing by
            yield stack
        finally:
            stack.stop()
    finally:
        stop_process(redis.process)


@pytest.fixture
def beat_user(beat_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_stack(beat_stack, request, monkeypatch)


def _runs(app_name: str, tag: str) -> list[dict]:
    calls = Client.from_config().request("GET", f"/v1/deployments/{app_name}/history")["calls"]
    return sorted((c for c in calls if c["function"] == tag), key=lambda c: c["created_at"])


def _at(call: dict) -> float:
    return datetime.fromisoformat(call["created_at"]).timestamp()


def test_a_schedule_is_refused_unless_it_is_a_period_or_a_cron() -> None:
    with pytest.raises(InvalidError, match="Period"):
        minimodal.App("x").function(schedule="every minute")
    with pytest.raises(InvalidError, match="5 fields"):
        minimodal.Cron("* * *")
    with pytest.raises(InvalidError, match="time zone"):
        minimodal.Cron("* * * * *", timezone="Mars/Olympus")
    with pytest.raises(InvalidError, match="at least 1 second"):
        minimodal.Period(seconds=0.5)


def test_a_period_runs_on_time_as_ordinary_calls_by_one_beat_and_stops_with_the_app(
    beat_stack: Stack, beat_user: str
) -> None:
    scheduled.app.deploy()
    wait_for(lambda: len(_runs("tests-scheduled", "tick")) >= 3, 60, "three scheduled runs")
    runs = _runs("tests-scheduled", "tick")
    assert _at(runs[2]) - _at(runs[0]) <= 8, f"3 runs took more than 8 s: {[r['created_at'] for r in runs]}"
    gaps = [_at(b) - _at(a) for a, b in zip(runs, runs[1:], strict=False)]
    assert min(gaps) > 1.0, f"two runs fired for one slot: {gaps}"
    wait_for(lambda: _runs("tests-scheduled", "tick")[0]["statuses"] == {"completed": 1}, 60, "a run to complete")
    leaders = [name for name in ("beat", "beat2") if "scheduled run of" in beat_stack.log(name)]
    assert len(leaders) == 1, "both beats fired runs"

    stop = subprocess.run(
        [sys.executable, "-m", "minimodal", "app", "stop", "tests-scheduled"],
        env={**beat_stack.env, "MINIMODAL_TOKEN": beat_user},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stop.returncode == 0, stop.stderr
    stopped_at = time.time()
    time.sleep(6)
    late = [r for r in _runs("tests-scheduled", "tick") if _at(r) > stopped_at + 2]
    assert late == [], "runs went on after `app stop`"
    history = subprocess.run(
        [sys.executable, "-m", "minimodal", "app", "history", "tests-scheduled"],
        env={**beat_stack.env, "MINIMODAL_TOKEN": beat_user},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.stdout.count(" tick ") >= 3


def test_a_cron_entry_is_in_redbeat_and_the_reconciler_rebuilds_it_after_a_flush(
    beat_stack: Stack, beat_user: str
) -> None:
    scheduled.cron_app.deploy()
    function_id = scheduled.every_five_minutes.object_id
    key = f"mm:redbeat:fn:{function_id}"
    redis = beat_stack.redis_client
    assert redis is not None
    wait_for(lambda: redis.exists(key), 30, "the cron entry in RedBeat")
    definition = json.loads(redis.hget(key, "definition"))
    assert definition["schedule"]["__type__"] == "crontab" and definition["schedule"]["minute"] == "*/5"
    assert definition["kwargs"]["schedule"] == {"cron": "*/5 * * * *", "timezone": "Europe/Paris"}
    redis.flushall()
    assert not redis.exists(key)
    wait_for(lambda: redis.exists(key), 60, "the reconciler to rebuild the entry after FLUSHALL")
    assert redis.zscore("mm:redbeat::schedule", key) is not None
    for name in ("beat", "beat2"):
        assert beat_stack.processes[name].poll() is None, f"{name} died:\n{beat_stack.log(name)[-2000:]}"


def test_beat_is_in_the_procfile() -> None:
    assert "beat: python -m mm_app beat" in Path(ROOT, "Procfile").read_text()


def test_an_ephemeral_app_runs_its_schedule_while_it_lives_and_never_after(beat_stack: Stack, beat_user: str) -> None:
    ticks = minimodal.Queue.from_name("ephemeral-ticks", create_if_missing=True)
    with scheduled.ephemeral.run():
        started = time.time()
        wait_for(lambda: ticks.len() >= 3, 30, "three runs of a Period(seconds=1) of a running ephemeral app")
        took = time.time() - started
    stopped_at = time.time()
    fired = sorted(ticks.get_many(100, block=False))
    assert len(fired) >= 3
    assert fired[2] - fired[0] <= 5, f"three runs took {fired[2] - fired[0]:.1f} s (a Period of 1 s)"
    time.sleep(4)
    late = [t for t in ticks.get_many(100, block=False) if t > stopped_at + 1.5]
    assert late == [], f"runs went on after the app stopped ({took:.1f} s to the third)"
