"""Workers and what they can hold; functions and what they need.

A worker registers its totals (:class:`~minimodal.protocol.WorkerCapacity`: slots, cpu, memory, GPUs,
runtimes, its own Celery queue) in ``mm:workers`` with every heartbeat, and its liveness as the Redis
time of that beat in ``mm:workers_seen`` (so no two machines' clocks are compared). What is free on a
worker is never reported by the worker: it is the totals minus the reservations of the tasks the
dispatcher placed there (``mm:wused``), changed atomically by the take and finish steps in
:mod:`.pending`. The older per-worker heartbeat key ``mm:worker:{id}`` (JSON with busy/idle counts,
active tasks and runners per function) stays for operators and ``/stats``.

A function's needs (:class:`~minimodal.protocol.FunctionNeeds`) are written at deploy from its
options: ``cpu`` (default 0.125 cores), ``memory`` (default 128 MiB), ``gpu``, whether it runs in a
container of a built image (then only a worker with the Docker runtime can run it), and the container
runtime it asks for (``experimental_options={"container_runtime": "runsc"}``: only a worker whose
containers run under gVisor, which it registers as ``sandbox``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

from redis import Redis

from minimodal import protocol
from minimodal.defaults import DEFAULT_FUNCTION_CPU, DEFAULT_FUNCTION_MEMORY
from minimodal.exception import InsufficientResourcesError, InvalidError
from minimodal.protocol import FunctionNeeds, WorkerCapacity

from . import lua

logger = logging.getLogger("minimodal.registry")


def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Every worker's latest heartbeat JSON (``mm:worker:*``; the keys expire when beats stop)."""
    workers = []
    for key in redis.scan_iter(protocol.worker_key("*"), count=1000):
        raw = redis.get(key)
        if raw:
            workers.append(json.loads(raw))
    return workers


def docker_workers(redis: Redis) -> list[dict[str, Any]]:
    return [w for w in live_workers(redis) if "docker" in w.get("runtimes", [])]


# ---- capacity --------------------------------------------------------------------------------


def beat(redis: Redis, capacity: WorkerCapacity, info: dict[str, Any], ttl: int) -> None:
    """One heartbeat: register the totals, mark the worker seen now (Redis time), refresh its info key."""
    lua.Script(redis, "beat")(
        {
            "workers": protocol.workers_key(),
            "workers_seen": protocol.workers_seen_key(),
            "heartbeat": protocol.worker_key(capacity.id),
            "wake": protocol.wake_key(),
        },
        {"worker_id": capacity.id, "capacity": capacity.to_json(), "info": json.dumps(info), "ttl": int(ttl)},
    )


def capacities(redis: Redis, dead_after: float) -> tuple[dict[str, WorkerCapacity], list[str]]:
    """``(live workers by id, ids of dead ones)``: dead = not seen for ``dead_after`` seconds of Redis time."""
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    pipe.zrange(protocol.workers_seen_key(), 0, -1, withscores=True)
    pipe.hgetall(protocol.workers_key())
    return split_live(*pipe.execute(), dead_after=dead_after)


def split_live(
    time_reply: tuple[int, int], seen: list[tuple[bytes, float]], registered: dict[bytes, bytes], *, dead_after: float
) -> tuple[dict[str, WorkerCapacity], list[str]]:
    """:func:`capacities` from the replies of TIME, ZRANGE workers_seen WITHSCORES and HGETALL workers."""
    now = time_reply[0] + time_reply[1] / 1e6
    last = {k.decode(): score for k, score in seen}
    live, dead = {}, []
    for raw_id, raw in registered.items():
        worker_id = raw_id.decode()
        if now - last.get(worker_id, 0) <= dead_after:
            live[worker_id] = WorkerCapacity.from_json(raw)
        else:
            dead.append(worker_id)
    dead += [w for w in last if w not in live and w not in dead]
    return live, dead


def used(redis: Redis) -> dict[str, dict[str, int]]:
    """Reservations per worker: ``{worker id: {"slots": n, "cpu": m, "memory": mib, "gpu:T4": n}}``."""
    return parse_used(redis.hgetall(protocol.worker_used_key()))


def parse_used(raw: dict[bytes, bytes]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        worker_id, _, resource = field.decode().rpartition("|")
        out.setdefault(worker_id, {})[resource] = int(value)
    return out


def forget(redis: Redis, worker_id: str) -> None:
    """Drop a stopped or dead worker: its registration, reservations, scaled target and Celery queue."""
    fields = [f for f in redis.hkeys(protocol.worker_used_key()) if f.decode().rpartition("|")[0] == worker_id]
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(protocol.workers_key(), worker_id)
    pipe.zrem(protocol.workers_seen_key(), worker_id)
    if fields:
        pipe.hdel(protocol.worker_used_key(), *fields)
    pipe.hdel(protocol.worker_target_key(), worker_id)
    pipe.delete(protocol.worker_queue(worker_id))  # messages nobody will consume (they are re-queued from the ledger)
    pipe.execute()


def unregister(redis: Redis, worker_id: str) -> None:
    """A worker shutting down takes no new placements (its reservations stay until its tasks finish)."""
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(protocol.workers_key(), worker_id)
    pipe.zrem(protocol.workers_seen_key(), worker_id)
    pipe.execute()


def detect_gpus() -> str:
    """This machine's GPUs as a worker inventory string (``"T4:2"``), from nvidia-smi; ``""`` without one."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return ""
    try:
        out = subprocess.run(
            [nvidia_smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        logger.warning("nvidia-smi failed; this worker offers no GPU", exc_info=True)
        return ""
    counts: dict[str, int] = {}
    for line in out.splitlines():
        # "Tesla T4" -> "T4", "NVIDIA A100-SXM4-80GB" -> "A100-SXM4-80GB"
        words = [w for w in line.strip().split() if w.upper() not in ("NVIDIA", "TESLA", "GEFORCE")]
        if words:
            label = "-".join(words).upper()
            counts[label] = counts.get(label, 0) + 1
    return ",".join(f"{label}:{n}" for label, n in counts.items())


# ---- needs -----------------------------------------------------------------------------------


def check_gpu_option(tag: str, value: Any) -> str:
    """The API's check of a function's ``gpu`` option."""
    try:
        protocol.parse_gpu(value)
    except ValueError as exc:
        raise InvalidError(f"function {tag!r}: {exc}") from None
    return str(value).strip()


def inputs_per_runner(options: dict[str, Any]) -> int:
    """How many inputs one runner of the function takes at once (@concurrent, @batched), else 1."""
    return max(1, int(options.get("concurrent_inputs") or options.get("batch_max_size") or 1))


def task_limit(options: dict[str, Any]) -> int:
    """Tasks of the function in flight at once: ``max_containers`` runners, each taking its inputs."""
    return int(options["max_containers"]) * inputs_per_runner(options)


def needs_of(options: dict[str, Any], queue: str) -> FunctionNeeds:
    """What one task of a function holds, from its options and its Celery queue (container or process)."""
    gpu, gpu_count = protocol.parse_gpu(options.get("gpu"))
    width = inputs_per_runner(options)  # a task is one input; a runner's inputs share its cpu and memory
    return FunctionNeeds(
        cpu=max(1, round(float(options.get("cpu") or DEFAULT_FUNCTION_CPU) * 1000 / width)),
        memory=max(1, int(options.get("memory") or DEFAULT_FUNCTION_MEMORY) // width),
        gpu=gpu,
        gpu_count=gpu_count,
        runtime="docker" if queue == protocol.QUEUE_CONTAINER else "process",
        sandbox=str(options.get("container_runtime") or ""),
    )


def shortfall(need: FunctionNeeds, worker: WorkerCapacity) -> list[str]:
    """The resources ``worker`` could never give ``need`` (empty: it can hold it when free)."""
    missing = []
    if need.runtime == "docker" and not worker.docker:
        missing.append("runtime")
    if need.sandbox and worker.sandbox != need.sandbox:
        missing.append("sandbox")
    if worker.cpu < need.cpu:
        missing.append("cpu")
    if worker.memory < need.memory:
        missing.append("memory")
    if need.gpu and not any(
        (need.gpu == protocol.GPU_ANY or label == need.gpu) and n >= need.gpu_count for label, n in worker.gpus.items()
    ):
        missing.append("gpu")
    if worker.slots < 1:
        missing.append("slots")
    return missing


def unschedulable(function_tag: str, need: FunctionNeeds, workers: list[WorkerCapacity]) -> InsufficientResourcesError:
    """The error for a call no live worker can ever hold, naming the resources that are short."""
    short = [set(shortfall(need, w)) for w in workers]
    alone = sorted(set.intersection(*short)) if short else []  # what no worker has at all
    parts = []
    for resource in alone or sorted(set.union(*short)):
        if resource == "cpu":
            parts.append(
                f"cpu={need.cpu / 1000:g} cores (the largest worker has {max(w.cpu for w in workers) / 1000:g})"
            )
        elif resource == "memory":
            parts.append(f"memory={need.memory} MiB (the largest worker has {max(w.memory for w in workers)} MiB)")
        elif resource == "gpu":
            offered = sorted({f"{label}:{n}" for w in workers for label, n in w.gpus.items()}) or ["none"]
            parts.append(f"gpu={need.gpu}:{need.gpu_count} (workers offer {', '.join(offered)})")
        elif resource == "runtime":
            parts.append("a worker with the Docker runtime (for its built image)")
        elif resource == "sandbox":
            parts.append(f"a worker whose containers run under {need.sandbox} (MINIMODAL_CONTAINER_RUNTIME)")
        else:
            parts.append(resource)
    together = "" if alone else "; no single worker has all of these together"
    return InsufficientResourcesError(
        f"{function_tag} needs {' and '.join(parts)}{together}: none of the {len(workers)} live worker(s) can run it. "
        "Lower the function's cpu/memory/gpu, or start a worker that offers them (MINIMODAL_WORKER_CPU, "
        "MINIMODAL_WORKER_MEMORY, MINIMODAL_WORKER_GPU)"
    )
