"""Warm pools: runners kept alive between calls, per function version, scaled by use.

A runner is checked out for one task at a time, or, for a function that takes several inputs at once
(``@concurrent``, ``@batched``), once per input up to ``max_inputs``: new inputs go to a busy runner
with room before an idle one, and a runner starts only when all are full. Per runner key (one user's
one function version):

- a call that finds no idle runner starts one (scale up when calls wait);
- ``min_containers`` runners are kept up even when idle (``ensure``), ``buffer_containers`` more idle
  ones are kept ready while any is busy, started in the background;
- an idle runner is stopped after ``scaledown_window`` seconds unless that would go below those
  floors, so an unused function scales to zero;
- a runner that dies or times out is dropped; the next call starts a fresh one.

``max_containers`` is a cap across all workers, so the dispatcher enforces it, not this pool. Floors
and buffers are per worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from .runtimes.base import Runner, RunnerSpec, RunnerStartError, Runtime

logger = logging.getLogger("minimodal.workers.pool")


class WarmPool:
    def __init__(self, runtime: Runtime, *, reap_interval: float = 1.0) -> None:
        self.runtime = runtime
        self._idle: dict[str, list[tuple[float, Runner]]] = defaultdict(list)
        self._busy: dict[str, set[Runner]] = defaultdict(set)
        self._starting: dict[str, int] = defaultdict(int)
        self._specs: dict[str, RunnerSpec] = {}
        self._shares: dict[Runner, int] = {}  # inputs in flight on each busy runner that takes several
        self._start_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._retired: set[str] = set()  # keys of stopped apps: their runners stop instead of idling
        self.started = 0  # runners started since the pool was made (cold starts)
        self.events: list[tuple[float, str, str]] = []  # (time, key, "start" | "stop"): scale decisions
        self._reaper = threading.Thread(target=self._reap_loop, args=(reap_interval,), name="mm-reaper", daemon=True)
        self._reaper.start()

    # ---- checkout ----

    def acquire(self, spec: RunnerSpec) -> Runner:
        """A warm runner for ``spec.key`` if one is idle, else a new one (may raise RunnerStartError).

        A runner of a function that takes several inputs at once (``spec.max_inputs`` > 1) is checked
        out once per input, up to ``max_inputs`` times; release it as many times.
        """
        if spec.shared:
            return self._acquire_share(spec)
        with self._lock:
            self._specs[spec.key] = spec
            idle = self._idle.get(spec.key, [])
            runner = None
            while idle and runner is None:
                _, candidate = idle.pop()
                if candidate.alive:
                    runner = candidate
                else:
                    candidate.stop()
            if runner is not None:
                self._busy[spec.key].add(runner)
        if runner is None:
            runner = self._start(spec)
            with self._lock:
                self._busy[spec.key].add(runner)
        self._top_up(spec.key)
        return runner

    def _acquire_share(self, spec: RunnerSpec) -> Runner:
        # One start at a time per key: callers that come while a runner starts share it, not start more.
        with self._lock:
            start_lock = self._start_locks[spec.key]
        with start_lock:
            with self._lock:
                self._specs[spec.key] = spec
                runner = self._share(spec)
            if runner is None:
                runner = self._start(spec)
                with self._lock:
                    self._busy[spec.key].add(runner)
                    self._shares[runner] = 1
        self._top_up(spec.key)
        return runner

    def _share(self, spec: RunnerSpec) -> Runner | None:
        """A busy runner with room for one more input, else an idle one (callers hold the lock)."""
        for runner in self._busy[spec.key]:
            if 0 < self._shares.get(runner, 0) < spec.max_inputs and not runner.broken:
                self._shares[runner] += 1
                return runner
        idle = self._idle.get(spec.key, [])
        while idle:
            _, candidate = idle.pop()
            if candidate.alive and not candidate.broken:
                self._busy[spec.key].add(candidate)
                self._shares[candidate] = 1
                return candidate
            candidate.stop()
        return None

    def release(self, runner: Runner) -> None:
        key = runner.spec.key
        with self._lock:
            shares = self._shares.pop(runner, 0) - 1
            if shares > 0:  # other inputs still run on it
                self._shares[runner] = shares
                return
            self._busy[key].discard(runner)
            if runner.alive and not runner.broken and not self._closed.is_set() and key not in self._retired:
                self._idle[key].append((time.monotonic(), runner))
                return
        runner.stop()
        self._top_up(key)

    @property
    def retired(self) -> set[str]:
        return set(self._retired)

    def retire(self, keys: set[str]) -> int:
        """The app of these runner keys stopped: stop their idle runners now, and busy ones when released."""
        with self._lock:
            self._retired |= keys
            stopping = [runner for key in keys for _, runner in self._idle.pop(key, [])]
            for key in keys:
                self._specs.pop(key, None)
                if stopping:
                    self.events.append((time.time(), key, "stop"))
        for runner in stopping:
            runner.stop()
        return len(stopping)

    def ensure(self, spec: RunnerSpec) -> None:
        """Keep ``spec.min_containers`` runners of this function up from now on."""
        with self._lock:
            self._specs[spec.key] = spec
        self._top_up(spec.key)

    # ---- sizes ----

    def _target(self, key: str) -> int:
        """How many runners this key should have now (callers hold the lock)."""
        spec = self._specs.get(key)
        if spec is None:
            return 0
        busy = len(self._busy[key])
        return max(spec.min_containers, busy + spec.buffer_containers if busy else 0)

    def _total(self, key: str) -> int:
        return len(self._busy[key]) + len(self._idle[key]) + self._starting[key]

    def _top_up(self, key: str) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            missing = self._target(key) - self._total(key)
            spec = self._specs.get(key)
            if missing <= 0 or spec is None:
                return
            self._starting[key] += missing
        for _ in range(missing):
            threading.Thread(target=self._start_idle, args=(spec,), name="mm-warm", daemon=True).start()

    def _start(self, spec: RunnerSpec) -> Runner:
        began = time.monotonic()
        runner = self.runtime.start(spec)
        runner.started_in = time.monotonic() - began
        with self._lock:
            self.started += 1
            self.events.append((time.time(), spec.key, "start"))
        logger.info("started a %s runner for %s (%s)", self.runtime.name, spec.labels.get("function"), spec.key[:16])
        return runner

    def _start_idle(self, spec: RunnerSpec) -> None:
        try:
            runner = self._start(spec)
        except RunnerStartError:
            logger.warning("a warm runner for %s failed to start", spec.labels.get("function"), exc_info=True)
            with self._lock:
                self._starting[spec.key] -= 1
            return
        with self._lock:
            self._starting[spec.key] -= 1
            if not self._closed.is_set():
                self._idle[spec.key].append((time.monotonic(), runner))
                return
        runner.stop()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "busy": sum(len(v) for v in self._busy.values()),
                "idle": sum(len(v) for v in self._idle.values()),
            }

    def runners(self, key: str) -> int:
        with self._lock:
            return len(self._busy[key]) + len(self._idle[key])

    # ---- scale down ----

    def reap(self, now: float | None = None) -> int:
        """Stop runners idle past their scaledown window, down to the key's floor; return how many."""
        now = time.monotonic() if now is None else now
        expired: list[Runner] = []
        with self._lock:
            for key, idle in list(self._idle.items()):
                spare = self._total(key) - self._target(key)  # how many may go without breaking a floor
                keep = []
                for since, runner in sorted(idle, key=lambda pair: pair[0]):  # oldest first
                    if not runner.alive:
                        expired.append(runner)
                    elif now - since >= runner.spec.scaledown_window and spare > 0:
                        spare -= 1
                        expired.append(runner)
                        self.events.append((time.time(), key, "stop"))
                    else:
                        keep.append((since, runner))
                self._idle[key] = keep
        for runner in expired:
            runner.stop()
        if expired:
            logger.info("stopped %d idle runner(s)", len(expired))
        return len(expired)

    def _reap_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self.reap()
                for key in list(self._specs):
                    self._top_up(key)  # replaces floor runners that died
            except Exception:  # noqa: BLE001 - the reaper must keep running
                logger.exception("reaping idle runners failed")

    def shutdown(self) -> None:
        """Stop every runner, idle or busy."""
        self._closed.set()
        with self._lock:
            runners = [r for idle in self._idle.values() for _, r in idle]
            runners += [r for busy in self._busy.values() for r in busy]
            self._idle.clear()
            self._busy.clear()
        for runner in runners:
            runner.stop()
        self.runtime.shutdown()
