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

Blank runners: with ``blank_runners`` > 0 the pool keeps that many runners started but with no function
loaded, per *blank key* (what the process or container is created with: for containers the image, limits
and network mode; see :meth:`Runtime.blank_key`), for the last few keys it has served (and the ones given
to :meth:`prestart`). A runner key with no idle runner takes a blank one and loads its function into it
(the ``S`` and ``F`` frames only), so a new user's or a new function's first call pays no process or
container start. A blank runner has run nothing: it is bound to one runner key (one user's one function
version) when it loads, lives in that key's pool from then on, and is never handed to another key, so
blanks change nothing in who shares a runner with whom. Each blank taken is replaced in the background.
A key gets blanks from its second runner start on (an image one function runs once gets none), and a key
no start has asked for in ``blank_idle_seconds`` is forgotten and its blanks stopped (those given to
:meth:`prestart` are kept for good), so an image nobody runs any more is not held by idle containers.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict, defaultdict

from minimodal.protocol import new_id

from .runtimes.base import Runner, RunnerSpec, RunnerStartError, Runtime

logger = logging.getLogger("minimodal.workers.pool")

BLANK_KEYS = 4  # blank keys (images, limits) kept supplied with blank runners: the most recently used
BLANK_RETRY_SECONDS = 30.0  # after a blank runner failed to start, its key gets no new one for this long


class WarmPool:
    def __init__(
        self, runtime: Runtime, *, reap_interval: float = 1.0, blank_runners: int = 0, blank_idle_seconds: float = 600.0
    ) -> None:
        self.runtime = runtime
        self.blank_runners = blank_runners  # blank runners kept per blank key
        self.blank_idle_seconds = blank_idle_seconds  # a blank key unused this long is forgotten
        self._blank_used: dict[str, float] = {}  # blank key -> when a start last asked for it (monotonic)
        self._pinned: set[str] = set()  # blank keys given to prestart(): never forgotten
        self._blank: dict[str, list[Runner]] = defaultdict(list)  # blank key -> started, nothing loaded
        self._blank_starting: dict[str, int] = defaultdict(int)
        self._blank_failed: dict[str, float] = {}  # blank key -> when a blank start last failed
        self._templates: OrderedDict[str, RunnerSpec] = OrderedDict()  # blank key -> what blanks start as
        self.bound = 0  # blank runners bound to a runner key at first use
        self._blank_threads: set[threading.Thread] = set()  # starting blank runners; shutdown waits for them
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
        runner = self._bind_blank(spec)
        if runner is None:
            runner = self.runtime.start(spec)
        runner.started_in = time.monotonic() - began
        runner.container_id, runner.started_at = new_id("ct"), time.time()
        with self._lock:
            self.started += 1
            self.events.append((time.time(), spec.key, "start"))
        logger.info("started a %s runner for %s (%s)", self.runtime.name, spec.labels.get("function"), spec.key[:16])
        return runner

    # ---- blank runners ----

    def prestart(self, spec: RunnerSpec) -> None:
        """Keep blank runners ready for functions that start like ``spec`` (its image, limits, network)."""
        key = self.runtime.blank_key(spec) if self.blank_runners > 0 else None
        if key is not None:
            with self._lock:
                self._pinned.add(key)
            self._learn(key, spec)
            self._top_up_blanks(key)

    def _learn(self, key: str, spec: RunnerSpec) -> None:
        """Remember ``key`` as one to keep blanks for (the most recent BLANK_KEYS); forget the oldest."""
        dropped: list[Runner] = []
        with self._lock:
            self._blank_used[key] = time.monotonic()
            if key in self._templates:
                self._templates.move_to_end(key)
                return
            # What the blanks start as: the process or container of ``spec``, nothing of its function or user.
            labels = {name: value for name, value in spec.labels.items() if name == "home"}
            self._templates[key] = dataclasses.replace(
                spec, key=f"blank:{key}", code=b"", source=None, load={}, labels=labels, min_containers=0,
                buffer_containers=0, max_inputs=1, batch_wait_ms=None, mounts={},
            )  # fmt: skip
            while len(self._templates) > BLANK_KEYS:
                old, _ = self._templates.popitem(last=False)
                dropped += self._forget_blank_key(old)
        for runner in dropped:
            runner.stop()

    def _forget_blank_key(self, key: str) -> list[Runner]:
        """Keep no blanks for ``key`` any more; its blank runners, to stop (callers hold the lock)."""
        self._templates.pop(key, None)
        self._blank_used.pop(key, None)
        self._pinned.discard(key)
        return self._blank.pop(key, [])

    def _bind_blank(self, spec: RunnerSpec) -> Runner | None:
        """A blank runner with ``spec``'s function loaded into it (bound to ``spec.key`` from now on), or None
        when there is none ready; raise RunnerStartError if the function does not load."""
        key = self.runtime.blank_key(spec) if self.blank_runners > 0 else None
        if key is None:
            return None
        with self._lock:
            seen = key in self._blank_used or key in self._pinned
            self._blank_used[key] = time.monotonic()
        if not seen:
            return None  # the first runner of this image here: keep blanks once a second one starts
        self._learn(key, spec)
        runner, dead = None, []
        with self._lock:
            blanks = self._blank.get(key, [])
            while blanks and runner is None:
                candidate = blanks.pop(0)  # the oldest first: the others have more time to finish starting
                if candidate.alive:
                    runner = candidate
                else:
                    dead.append(candidate)
        for candidate in dead:
            candidate.stop()
        self._top_up_blanks(key)
        if runner is None:
            return None
        try:
            runner.load(spec)  # stops the runner if it fails: it is never handed to anyone else
        except RunnerStartError as exc:
            if not exc.infrastructure:
                raise  # the function's own load error: a fresh runner would fail the same way
            logger.warning("a blank %s runner failed to load %s; starting one", self.runtime.name, spec.key[:16])
            return None
        with self._lock:
            self.bound += 1
        return runner

    def _top_up_blanks(self, key: str) -> None:
        with self._lock:
            template = self._templates.get(key)
            if template is None or self._closed.is_set():
                return
            if time.monotonic() - self._blank_failed.get(key, -BLANK_RETRY_SECONDS) < BLANK_RETRY_SECONDS:
                return
            missing = self.blank_runners - len(self._blank[key]) - self._blank_starting[key]
            if missing <= 0:
                return
            self._blank_starting[key] += missing
            threads = [
                threading.Thread(target=self._start_blank, args=(key, template), name="mm-blank", daemon=True)
                for _ in range(missing)
            ]
            # Started under the lock that saw the pool open, so that shutdown() waits for each of them.
            self._blank_threads.update(threads)
            for thread in threads:
                thread.start()

    def _start_blank(self, key: str, template: RunnerSpec) -> None:
        try:
            self._start_blank_runner(key, template)
        finally:
            with self._lock:
                self._blank_threads.discard(threading.current_thread())

    def _start_blank_runner(self, key: str, template: RunnerSpec) -> None:
        try:
            runner = self.runtime.start_blank(template)
        except RunnerStartError:
            logger.warning("a blank %s runner failed to start", self.runtime.name, exc_info=True)
            with self._lock:
                self._blank_starting[key] -= 1
                self._blank_failed[key] = time.monotonic()
            return
        with self._lock:
            self._blank_starting[key] -= 1
            if not self._closed.is_set() and key in self._templates:
                self._blank[key].append(runner)
                return
        runner.stop()  # the pool closed while it started: nothing may outlive the pool

    def blanks(self) -> int:
        """Blank runners ready now (started, no function loaded)."""
        with self._lock:
            return sum(len(v) for v in self._blank.values())

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

    def all_runners(self) -> list[Runner]:
        """Every runner, idle or busy (what `minimodal container list` shows)."""
        with self._lock:
            runners = [r for idle in self._idle.values() for _, r in idle]
            runners += [r for busy in self._busy.values() for r in busy]
        return [r for r in runners if r.alive]

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
                self._reap_blanks()
            except Exception:  # noqa: BLE001 - the reaper must keep running
                logger.exception("reaping idle runners failed")

    def _reap_blanks(self, now: float | None = None) -> None:
        """Forget blank keys unused for ``blank_idle_seconds``; drop blank runners that died, and start their
        replacements."""
        now = time.monotonic() if now is None else now
        dead = []
        with self._lock:
            for key, used in list(self._blank_used.items()):
                if key not in self._pinned and now - used >= self.blank_idle_seconds:
                    dead += self._forget_blank_key(key)
            for blanks in self._blank.values():
                dead += [runner for runner in blanks if not runner.alive]
                blanks[:] = [runner for runner in blanks if runner not in dead]
            keys = list(self._templates)
        for runner in dead:
            runner.stop()
        for key in keys:
            self._top_up_blanks(key)

    def shutdown(self) -> None:
        """Stop every runner, idle, busy or blank."""
        self._closed.set()
        with self._lock:
            runners = [r for idle in self._idle.values() for _, r in idle]
            runners += [r for busy in self._busy.values() for r in busy]
            runners += [r for blanks in self._blank.values() for r in blanks]
            self._idle.clear()
            self._busy.clear()
            self._blank.clear()
            starting = list(self._blank_threads)
        for thread in starting:  # each stops the runner it started, the pool being closed
            thread.join(timeout=60)
        with self._lock:
            runners += [r for blanks in self._blank.values() for r in blanks]  # none, unless one raced the close
            self._blank.clear()
        for runner in runners:
            runner.stop()
        self.runtime.shutdown()
