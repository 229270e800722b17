"""Warm pools: runners kept alive between calls, per function version, stopped after idling.

A runner is checked out for one task at a time. Runners that die or time out are dropped and the
next call starts a fresh one; idle runners are stopped after their ``scaledown_window``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from .runtimes.base import Runner, RunnerSpec, Runtime

logger = logging.getLogger("minimodal.workers.pool")


class WarmPool:
    def __init__(self, runtime: Runtime, *, reap_interval: float = 1.0) -> None:
        self.runtime = runtime
        self._idle: dict[str, list[tuple[float, Runner]]] = defaultdict(list)
        self._busy: set[Runner] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.started = 0  # runners started since the pool was made (cold starts)
        self._reaper = threading.Thread(target=self._reap_loop, args=(reap_interval,), name="mm-reaper", daemon=True)
        self._reaper.start()

    def acquire(self, spec: RunnerSpec) -> Runner:
        """A warm runner for ``spec.key`` if one is idle, else a new one (may raise RunnerStartError)."""
        with self._lock:
            idle = self._idle.get(spec.key, [])
            while idle:
                _, runner = idle.pop()
                if runner.alive:
                    self._busy.add(runner)
                    return runner
                runner.stop()
        runner = self.runtime.start(spec)
        with self._lock:
            self.started += 1
            self._busy.add(runner)
        logger.info("started a %s runner for %s", self.runtime.name, spec.key[:16])
        return runner

    def release(self, runner: Runner) -> None:
        with self._lock:
            self._busy.discard(runner)
            if runner.alive and not self._closed.is_set():
                self._idle[runner.spec.key].append((time.monotonic(), runner))
                return
        runner.stop()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"busy": len(self._busy), "idle": sum(len(v) for v in self._idle.values())}

    def reap(self, now: float | None = None) -> int:
        """Stop runners idle for longer than their scaledown window; return how many."""
        now = time.monotonic() if now is None else now
        expired: list[tuple[float, Runner]] = []
        with self._lock:
            for key, idle in list(self._idle.items()):
                keep = []
                for since, runner in idle:
                    (expired if now - since >= runner.spec.scaledown_window or not runner.alive else keep).append(
                        (since, runner)
                    )
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for _, runner in expired:
            runner.stop()
        return len(expired)

    def _reap_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - the reaper must keep running
                logger.exception("reaping idle runners failed")

    def shutdown(self) -> None:
        """Stop every runner, idle or busy."""
        self._closed.set()
        with self._lock:
            runners = [r for idle in self._idle.values() for _, r in idle] + list(self._busy)
            self._idle.clear()
            self._busy.clear()
        for runner in runners:
            runner.stop()
        self.runtime.shutdown()
