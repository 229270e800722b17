"""Warm pools with real runner processes: reuse, scale to zero, floors and buffers, replacement."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Iterator

import cloudpickle
import pytest

from tests.conftest import wait_for
from workers.pool import WarmPool
from workers.runtimes.base import RunnerSpec
from workers.runtimes.process import ProcessRuntime


def _spec(**options: float) -> RunnerSpec:
    return RunnerSpec(
        key="u:f",
        code=cloudpickle.dumps(os.getpid),
        timeout=10,
        scaledown_window=60,
        labels={"function": "getpid"},
        **options,
    )  # type: ignore[arg-type]


@pytest.fixture
def pool() -> Iterator[WarmPool]:
    pool = WarmPool(ProcessRuntime(), reap_interval=3600)  # the tests call reap() themselves
    yield pool
    pool.shutdown()


def _pid(pool: WarmPool, spec: RunnerSpec) -> int:
    runner = pool.acquire(spec)
    try:
        outcome = runner.call(cloudpickle.dumps(((), {})), call_id="fc-t", idx=0)
        return cloudpickle.loads(outcome.data)
    finally:
        pool.release(runner)


def test_a_released_runner_is_reused_by_the_next_call(pool: WarmPool) -> None:
    spec = _spec()
    assert _pid(pool, spec) == _pid(pool, spec)
    assert pool.started == 1


def test_idle_runners_stop_after_the_scaledown_window_and_the_next_call_starts_one(pool: WarmPool) -> None:
    spec = _spec()
    _pid(pool, spec)
    assert pool.reap(now=time.monotonic() + 30) == 0  # not idle long enough yet
    assert pool.reap(now=time.monotonic() + 61) == 1
    assert pool.runners(spec.key) == 0
    _pid(pool, spec)
    assert pool.started == 2
    assert [event for _, _, event in pool.events] == ["start", "stop", "start"]


def test_min_containers_are_kept_up_and_never_reaped(pool: WarmPool) -> None:
    spec = _spec(min_containers=2)
    pool.ensure(spec)
    wait_for(lambda: pool.runners(spec.key) == 2, 30, "two warm runners")
    assert pool.reap(now=time.monotonic() + 3600) == 0
    pool.ensure(_spec(min_containers=0))
    assert pool.reap(now=time.monotonic() + 3600) == 2


def test_buffer_containers_keep_spare_runners_while_busy(pool: WarmPool) -> None:
    spec = _spec(buffer_containers=1)
    runner = pool.acquire(spec)
    wait_for(lambda: pool.runners(spec.key) == 2, 30, "a spare runner while one is busy")
    assert pool.counts() == {"busy": 1, "idle": 1}
    pool.release(runner)
    assert pool.reap(now=time.monotonic() + 3600) == 2  # idle function: down to zero


def test_a_dead_idle_runner_is_replaced_on_the_next_call(pool: WarmPool) -> None:
    spec = _spec()
    first = _pid(pool, spec)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not any(r.alive for _, r in pool._idle[spec.key]), 10, "the runner to die")
    assert _pid(pool, spec) != first


# ---- blank runners: started before any call, bound to one runner key at first use ----


def _user_spec(user: str) -> RunnerSpec:
    return dataclasses.replace(_spec(), key=f"{user}:f", labels={"function": "getpid", "user": user})


@pytest.fixture
def blank_pool() -> Iterator[WarmPool]:
    pool = WarmPool(ProcessRuntime(), reap_interval=3600, blank_runners=1)
    pool.prestart(RunnerSpec(key="blank", code=b"", timeout=10, scaledown_window=0))
    yield pool
    pool.shutdown()


def _blank_pids(pool: WarmPool) -> set[int]:
    wait_for(lambda: pool.blanks() == 1, 30, "a blank runner")
    return {runner.process.pid for blanks in pool._blank.values() for runner in blanks}  # type: ignore[attr-defined]


def test_a_new_users_first_call_is_served_by_a_runner_started_before_it(blank_pool: WarmPool) -> None:
    before = _blank_pids(blank_pool)
    assert _pid(blank_pool, _user_spec("alice")) in before  # the blank runner, now alice's
    assert (blank_pool.bound, blank_pool.runtime.name) == (1, "process")
    assert _blank_pids(blank_pool).isdisjoint(before)  # replaced by a new blank one


def test_a_blank_runner_bound_to_one_user_is_never_used_by_another(blank_pool: WarmPool) -> None:
    alice, bob = _user_spec("alice"), _user_spec("bob")
    first_blank = _blank_pids(blank_pool)
    alices = {_pid(blank_pool, alice)}
    assert alices == first_blank
    second_blank = _blank_pids(blank_pool)
    # Alice's runner is idle now, and the only other runner is a blank one: Bob gets the blank one.
    bobs = {_pid(blank_pool, bob)}
    assert bobs == second_blank
    busy = blank_pool.acquire(alice)  # and while Alice's runner is busy, Bob still never gets it
    try:
        for _ in range(3):
            _blank_pids(blank_pool)
            bobs.add(_pid(blank_pool, bob))
            alices.add(_pid(blank_pool, alice))  # a second runner of Alice's, from a blank one
    finally:
        blank_pool.release(busy)
    for _ in range(3):
        alices.add(_pid(blank_pool, alice))
        bobs.add(_pid(blank_pool, bob))
    assert alices.isdisjoint(bobs)
    assert len(bobs) == 1 and len(alices) == 2
    runners = blank_pool._busy[alice.key] | {runner for _, runner in blank_pool._idle[alice.key]}
    assert {runner.spec.key for runner in runners} == {alice.key}


def test_an_image_gets_blanks_from_its_second_runner_start_and_loses_them_when_no_start_asks_for_them() -> None:
    pool = WarmPool(ProcessRuntime(), reap_interval=3600, blank_runners=1, blank_idle_seconds=60)
    try:
        _pid(pool, _user_spec("alice"))  # the first runner of this kind here: no blanks kept for it yet
        time.sleep(0.5)
        assert (pool.blanks(), pool._blank_starting) == (0, {})  # type: ignore[attr-defined]
        _pid(pool, _user_spec("bob"))  # a second one: it is in use, so blanks are kept for it from now on
        (blank,) = _blank_pids(pool)
        assert _pid(pool, _user_spec("carol")) == blank and pool.bound == 1
        _blank_pids(pool)  # replaced
        pool._reap_blanks(now=time.monotonic() + 59)  # type: ignore[attr-defined]
        assert pool.blanks() == 1
        pool._reap_blanks(now=time.monotonic() + 61)  # type: ignore[attr-defined]
        assert pool.blanks() == 0 and not pool._templates  # type: ignore[attr-defined]
        time.sleep(0.5)
        assert pool.blanks() == 0  # and none is started again
    finally:
        pool.shutdown()


def test_blanks_given_to_prestart_are_kept_however_long_they_go_unused(blank_pool: WarmPool) -> None:
    before = _blank_pids(blank_pool)
    blank_pool._reap_blanks(now=time.monotonic() + 10 * blank_pool.blank_idle_seconds)  # type: ignore[attr-defined]
    assert _blank_pids(blank_pool) == before


def test_a_blank_runner_that_died_is_never_handed_out(blank_pool: WarmPool) -> None:
    (dead,) = _blank_pids(blank_pool)
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: not any(r.alive for b in blank_pool._blank.values() for r in b), 10, "the blank runner to die")
    assert _pid(blank_pool, _user_spec("alice")) != dead
