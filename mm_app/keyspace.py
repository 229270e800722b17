"""The server's Redis key layout, Celery task and queue names, and the records only the server reads.

Every Redis key comes from one helper here, one per key family, all under ``mm:`` (rq ``Job.key_for``).
The SDK never reads these: what client, API and runner must agree on stays in ``minimodal.protocol``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from minimodal.protocol import GPU_ANY, parse_gpu

KEY_PREFIX = "mm"

# Celery names: the API never sends tasks; the dispatcher sends them by name.
TASK_EXECUTE = "mm.execute"
TASK_BUILD_IMAGE = "mm.build_image"
TASK_SANDBOX = "mm.sandbox"  # one sandbox's whole life, on the worker the dispatcher placed it on
TASK_SCHEDULED_RUN = "mm.scheduled_run"  # a RedBeat entry's task: beat itself submits the call (mm_app/beat.py)
REDBEAT_PREFIX = "mm:redbeat:"  # RedBeat's keys (schedule zset, entries, lock) live under this prefix
QUEUE_CPU = "mm.cpu"  # functions that run in a runner process (no image built: no Docker worker at deploy)
QUEUE_CONTAINER = "mm.container"  # functions whose image was built: only Docker workers consume it
QUEUE_BUILD = "mm.build"  # image builds: only Docker workers consume it


def key(*parts: object) -> str:
    return ":".join((KEY_PREFIX, *(str(p) for p in parts)))


def pending_key(user_id: int) -> str:
    """List of pending entries (see :class:`PendingEntry`) of one user."""
    return key("pending", user_id)


def pending_users_key() -> str:
    """Set of user ids that may have pending entries."""
    return key("pending_users")


def running_key() -> str:
    """Hash user id -> number of dispatched, unfinished tasks."""
    return key("running")


def quota_key() -> str:
    """Hash user id -> concurrency quota (tasks in flight), written by the API, read by the dispatcher."""
    return key("quota")


def cancelled_key(call_id: str) -> str:
    """Set while a call is cancelled: workers run none of its inputs (mm_app/cancel.py)."""
    return key("cancelled", call_id)


def retired_functions_key() -> str:
    """Set of function ids whose app stopped: workers stop their runners (expires an hour after the last)."""
    return key("retired")


def lent_key(user_id: int) -> str:
    """Sorted set of a user's requests now waiting on other calls, scored by expiry: their slots are lent."""
    return key("lent", user_id)


def scoped_token_key(digest: str) -> str:
    """String ``user_id|worker_id``: a token a worker minted for the calls its containers make."""
    return key("scoped", digest)


def users_version_key() -> str:
    """Integer: bumped on every change to a user through the API (the API processes' token caches)."""
    return key("users", "version")


def token_digest(token: str) -> str:
    """How tokens are stored: their SHA-256 hex digest."""

    return hashlib.sha256(token.encode()).hexdigest()


def wake_key() -> str:
    """List the dispatcher blocks on; anything pushed wakes it."""
    return key("dispatch", "wake")


def inputs_key(call_id: str) -> str:
    """Hash input index -> input payload (pickled args or a blob reference) of one function call."""
    return key("in", call_id)


def outputs_key(call_id: str) -> str:
    """Stream of output envelopes of one function call, in completion order."""
    return key("out", call_id)


def requeue_key(call_id: str) -> str:
    """Hash input index -> times the platform (not the user's code) failed it and it was queued again."""
    return key("requeue", call_id)


def done_key(call_id: str) -> str:
    """Set of input indexes of a call whose output is published: a duplicate run never publishes twice."""
    return key("done", call_id)


def items_key(call_id: str) -> str:
    """Stream of generator items of one function call, each with its input and item index, then ``done``."""
    return key("items", call_id)


def logs_key(call_id: str) -> str:
    """Stream of what one call's inputs printed."""
    return key("logs", call_id)


def app_logs_key(app_id: str) -> str:
    """Stream of what all calls of one app printed."""
    return key("applogs", app_id)


def schedules_dirty_key() -> str:
    """Set when deployments changed: beat reconciles its RedBeat entries with the database on its next tick."""
    return key("schedules", "dirty")


def blob_key(blob_id: str) -> str:
    """Bytes of one large payload."""
    return key("blob", blob_id)


def blob_owner_key(blob_id: str) -> str:
    """User id that uploaded or produced a blob."""
    return key("blob_owner", blob_id)


def function_stats_key(function_id: str) -> str:
    """Hash with the moving average run time of a function's inputs (``avg_us``)."""
    return key("fnstat", function_id)


def function_queue_key() -> str:
    """Hash function id -> the Celery queue its calls go to (written at deploy)."""
    return key("fnqueue")


def function_limit_key() -> str:
    """Hash function id -> max_containers: tasks of that function in flight across all workers."""
    return key("fnlimit")


def function_running_key() -> str:
    """Hash function id -> its tasks in flight (dispatched, not finished)."""
    return key("fnrunning")


def warm_key() -> str:
    """Hash function id -> min_containers, for functions of running apps that keep runners warm."""
    return key("warm")


def file_key(sha256: str) -> str:
    """Bytes of one content-addressed upload (build context files)."""
    return key("file", sha256)


def build_log_key(image_id: str) -> str:
    """Stream of build log lines of one image, ending with a ``done`` entry."""
    return key("buildlog", image_id)


def worker_key(worker_id: str) -> str:
    """Heartbeat hash of one worker (expires when the worker stops beating)."""
    return key("worker", worker_id)


def control_key(worker_id: str) -> str:
    """List of control requests to one worker (container stop/exec/tty/sandbox), read by its control thread."""
    return key("ctl", worker_id)


def control_reply_key(request_id: str) -> str:
    """List holding the one JSON answer to a control request (expires)."""
    return key("ctlreply", request_id)


def tty_in_key(session_id: str) -> str:
    """List of what a terminal session's client typed (and resizes), for the worker that runs it."""
    return key("tty", session_id, "in")


def tty_out_key(session_id: str) -> str:
    """Stream of what a terminal session's process wrote, then an ``end`` entry with its exit code."""
    return key("tty", session_id, "out")


def dispatcher_heartbeat_key() -> str:
    return key("dispatcher", "heartbeat")


def weight_key() -> str:
    """Hash user id -> fair-share weight, written by the API next to the quota, read by the dispatcher."""
    return key("weight")


def pending_inputs_key() -> str:
    """Hash user id -> inputs waiting in that user's pending queue (not yet dispatched)."""
    return key("pending_inputs")


def function_needs_key() -> str:
    """Hash function id -> :class:`FunctionNeeds` JSON: what one task of it holds on a worker (at deploy)."""
    return key("fnneed")


def workers_key() -> str:
    """Hash worker id -> :class:`WorkerCapacity` JSON: totals of every registered worker."""
    return key("workers")


def workers_seen_key() -> str:
    """Sorted set worker id -> Redis time (s) of its last heartbeat: liveness without trusting clocks."""
    return key("workers_seen")


def worker_used_key() -> str:
    """Hash ``{worker id}|{resource}`` -> amount reserved by dispatched, unfinished tasks.

    Resources: ``slots``, ``cpu`` (millicores), ``memory`` (MiB), ``gpu:{LABEL}`` (devices).
    """
    return key("wused")


def worker_target_key() -> str:
    """Hash worker id -> the concurrency the autoscaler has scaled that worker to (slots it keeps warm)."""
    return key("wtarget")


def inflight_key() -> str:
    """Hash task id -> :class:`InflightTask`: every dispatched, unfinished task and what it reserved."""
    return key("inflight")


def dispatch_leader_key() -> str:
    """String: the id of the dispatcher holding the lease (expires unless renewed)."""
    return key("dispatch", "leader")


def dispatch_state_key() -> str:
    """Hash of the leader's fair-share state (deficits, ring position, reservations), for failover and stats."""
    return key("dispatch", "state")


def dispatch_stats_key() -> str:
    """Hash of dispatcher counters: ``dispatched``, ``reclaimed``, ``rebuilt``, ``grown``, ``shrunk``."""
    return key("dispatch", "stats")


def dispatch_log_key() -> str:
    """Capped stream of dispatch decisions: user, call, run, worker, running and quota after the take."""
    return key("dispatch", "log")


def rebuild_lock_key() -> str:
    """String lock: one dispatcher at a time rebuilds pending queues from the database."""
    return key("dispatch", "rebuild")


def scale_events_key() -> str:
    """Capped list (newest first) of autoscaler decisions as JSON (see :mod:`mm_app.scaler`)."""
    return key("scale", "events")


def rate_key(user_id: int) -> str:
    """String: the call-submission rate limiter's theoretical arrival time (ms) of one user (GCRA)."""
    return key("rate", user_id)


def worker_queue(worker_id: str) -> str:
    """The Celery queue of one worker: the dispatcher routes each task to the worker it placed it on."""
    return f"mm.w.{worker_id}"


def object_names_key(user_id: int, kind: str) -> str:
    """Hash name -> object id of one user's named objects of one kind (``dict``, ``queue``)."""
    return key("objnames", user_id, kind)


def object_key(object_id: str) -> str:
    """Hash describing one object: ``user``, ``kind``, ``name`` (empty for an ephemeral one), ``created``."""
    return key("obj", object_id)


def dict_data_key(object_id: str) -> str:
    """Hash pickled key -> pickled value of one Dict."""
    return key("dict", object_id)


def queue_data_key(object_id: str, partition: str) -> str:
    """List of pickled values of one partition of one Queue (``""`` is the default partition)."""
    return key("queue", object_id, partition)


def queue_partitions_key(object_id: str) -> str:
    """Set of the partitions of one Queue that may hold values."""
    return key("queueparts", object_id)


def volume_files_key(volume_id: str) -> str:
    """Hash path -> JSON ``{"sha", "size", "mtime"}``: the committed files of one Volume."""
    return key("volfiles", volume_id)


@dataclass(frozen=True)
class PendingEntry:
    """A run of inputs ``[start, end)`` of one function call, waiting to be dispatched.

    One ``.remote()`` is one entry of one input; a ``.map`` request of many inputs is one entry that
    the dispatcher splits into tasks sized by the function's measured run time.
    """

    call_id: str
    function_id: str
    start: int
    end: int

    def encode(self) -> str:
        """The record in the pending list: a JSON object of the fields by name (mm_app/lua/_sched.lua)."""
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: str | bytes) -> PendingEntry:
        d = json.loads(raw)
        return cls(d["call_id"], d["function_id"], int(d["start"]), int(d["end"]))


def parse_gpu_inventory(spec: str | None) -> dict[str, int]:
    """A worker's GPUs, ``"T4:2,A100"`` -> ``{"T4": 2, "A100": 1}`` (``""`` or None: none)."""
    inventory: dict[str, int] = {}
    for part in (spec or "").split(","):
        if part.strip():
            label, n = parse_gpu(part)
            if label == GPU_ANY:
                raise ValueError(f"{spec!r}: a worker names its GPU models; 'any' is for functions")
            inventory[label] = inventory.get(label, 0) + n
    return inventory


@dataclass(frozen=True)
class FunctionNeeds:
    """What one task of a function holds on the worker that runs it (one runner at a time)."""

    cpu: int  # millicores
    memory: int  # MiB
    gpu: str = ""  # "" none, GPU_ANY, or a model label such as "T4"
    gpu_count: int = 0
    runtime: str = "process"  # "process", or "docker" for a function with a built image
    sandbox: str = ""  # "" any worker; "runsc": only a worker whose containers run under gVisor

    def to_json(self) -> str:
        return json.dumps(
            {
                "cpu": self.cpu,
                "memory": self.memory,
                "gpu": self.gpu,
                "gpu_count": self.gpu_count,
                "runtime": self.runtime,
                "sandbox": self.sandbox,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> FunctionNeeds:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FunctionNeeds:
        return cls(
            int(d["cpu"]),
            int(d["memory"]),
            d.get("gpu", ""),
            int(d.get("gpu_count", 0)),
            d["runtime"],
            d.get("sandbox", ""),
        )

    def describe(self) -> str:
        gpu = f", gpu={self.gpu}:{self.gpu_count}" if self.gpu else ""
        sandbox = f", container_runtime={self.sandbox}" if self.sandbox else ""
        return f"cpu={self.cpu / 1000:g}, memory={self.memory} MiB{gpu}, runtime={self.runtime}{sandbox}"


@dataclass(frozen=True)
class WorkerCapacity:
    """What a worker can hold, registered with every heartbeat (the free part is derived from reservations)."""

    id: str
    queue: str  # its own Celery queue, :func:`worker_queue`
    slots: int  # tasks it runs at once (its Celery concurrency): the per-worker cap
    cpu: int  # millicores
    memory: int  # MiB
    gpus: dict[str, int]  # model label -> devices
    docker: bool  # has the Docker runtime (can run functions with a built image)
    offered: int | None = None  # slots it takes work into now (its circuit breaker); None: all of them
    sandbox: str = ""  # what its containers run under: "runc", "runsc" (gVisor), "" without Docker

    @property
    def open_slots(self) -> int:
        return self.slots if self.offered is None else min(self.offered, self.slots)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "queue": self.queue,
                "slots": self.slots,
                "offered": self.open_slots,
                "cpu": self.cpu,
                "memory": self.memory,
                "gpus": self.gpus,
                "docker": self.docker,
                "sandbox": self.sandbox,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerCapacity:
        d = json.loads(raw)
        return cls(
            d["id"],
            d["queue"],
            int(d["slots"]),
            int(d["cpu"]),
            int(d["memory"]),
            dict(d["gpus"]),
            d["docker"],
            d.get("offered"),
            d.get("sandbox", ""),
        )


@dataclass(frozen=True)
class InflightTask:
    """One dispatched, unfinished task in :func:`inflight_key`: what to release or re-queue."""

    user_id: int
    function_id: str
    call_id: str
    start: int
    end: int
    worker_id: str
    cpu: int
    memory: int
    gpu: str  # the label reserved ("" none)
    gpu_count: int
    cost: int  # the fair-share cost charged, in estimated microseconds of run time
    at: float  # Redis time of the dispatch
    dispatcher: str

    def encode(self) -> str:
        """The ledger record: a JSON object of the fields by name (mm_app/lua/_sched.lua)."""
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: str | bytes) -> InflightTask:
        d = json.loads(raw)
        return cls(
            int(d["user_id"]),
            d["function_id"],
            d["call_id"],
            int(d["start"]),
            int(d["end"]),
            d["worker_id"],
            int(d["cpu"]),
            int(d["memory"]),
            d["gpu"],
            int(d["gpu_count"]),
            int(d["cost"]),
            float(d["at"]),
            d["dispatcher"],
        )


def sandbox_control_key(sandbox_id: str) -> str:
    """List of JSON requests (exec, terminate, snapshot) to the worker that owns the sandbox."""
    return key("sb", sandbox_id, "ctl")


def sandbox_reply_key(sandbox_id: str, request_id: str) -> str:
    """List the owning worker pushes one JSON reply to a control request on."""
    return key("sb", sandbox_id, "reply", request_id)


def sandbox_state_key(sandbox_id: str) -> str:
    """Hash of a sandbox's live state: state, returncode, worker, error, last activity."""
    return key("sb", sandbox_id, "state")


def sandbox_events_key(sandbox_id: str) -> str:
    """Stream of process ends (``proc``, ``returncode``) and the sandbox's own end (``proc`` = ``""``)."""
    return key("sb", sandbox_id, "events")


def sandbox_output_key(sandbox_id: str, process_id: str, fd: int) -> str:
    """Stream of one process's stdout (fd 1) or stderr (fd 2) chunks, then an ``eof`` entry."""
    return key("sb", sandbox_id, "out", process_id, fd)


def sandbox_stdin_key(sandbox_id: str, process_id: str) -> str:
    """List of a process's stdin chunks (an empty chunk is the end of its stdin)."""
    return key("sb", sandbox_id, "in", process_id)


def sandbox_keys_pattern(sandbox_id: str) -> str:
    return key("sb", sandbox_id, "*")
