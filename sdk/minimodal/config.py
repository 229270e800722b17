"""Settings: each declared once with its type, default and ``MINIMODAL_*`` variable.

Resolution order: the environment variable, then the profile file ``$MINIMODAL_HOME/config.toml``
(written by ``minimodal up``), then the default. A value that does not parse raises
:class:`~minimodal.exception.InvalidError`. Nothing is read at import time.

Example::

    from minimodal import config
    config.get("server_url")          # "http://127.0.0.1:8000"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import defaults
from .exception import InvalidError


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any] = str
    help: str = ""

    @property
    def env_var(self) -> str:
        return "MINIMODAL_" + self.name.upper()


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _machine_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):  # not POSIX: say 4 GiB and let the operator set it
        return 4096


_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("server_url", defaults.DEFAULT_SERVER_URL, help="URL of the MiniModal API"),
        Setting("token", None, help="bearer token of the user"),
        Setting("redis_url", None, help="Redis of the control plane; `minimodal up` starts one when unset"),
        Setting("database_url", None, help="SQLAlchemy URL; SQLite under MINIMODAL_HOME when unset"),
        Setting("api_host", defaults.DEFAULT_API_HOST),
        Setting("api_port", defaults.DEFAULT_API_PORT, int),
        Setting("api_processes", os.cpu_count() or 2, int, "API (gunicorn) worker processes (default: the cores)"),
        Setting("api_threads", defaults.DEFAULT_API_THREADS, int, "threads per API process (requests at once)"),
        Setting("flower_port", 5555, int, "port of Flower under `minimodal up`"),
        Setting("local_redis_port", defaults.DEFAULT_LOCAL_REDIS_PORT, int, "port of the Redis `minimodal up` starts"),
        Setting("inline_payload_size", defaults.DEFAULT_INLINE_PAYLOAD_SIZE, int),
        Setting("max_payload_size", defaults.DEFAULT_MAX_PAYLOAD_SIZE, int),
        Setting("result_ttl", defaults.DEFAULT_RESULT_TTL, int),
        Setting("volume_store", None, help="the volumes' file store (the API's); MINIMODAL_HOME/volumes when unset"),
        Setting("secret_key", None, help="Fernet key of secrets at rest; else generated once into MINIMODAL_HOME"),
        Setting("worker_token", None, help="workers' token on the API's internal routes; else made in MINIMODAL_HOME"),
        Setting("breaker_failures", 5, int, "platform failures within breaker_window that open a worker's breaker"),
        Setting("breaker_window", 300.0, float, "seconds over which breaker_failures are counted"),
        Setting("breaker_cooldown", 60.0, float, "seconds an open breaker waits before one probe task"),
        Setting("runner_python", None, help="the Python that runs runner processes (default: the worker's)"),
        Setting("stream_ttl", defaults.DEFAULT_STREAM_TTL, int, "seconds generator items stay after a call"),
        Setting("default_quota", defaults.DEFAULT_QUOTA, int),
        Setting("default_weight", defaults.DEFAULT_WEIGHT, int),
        Setting("worker_concurrency", os.cpu_count() or 2, int, "calls one worker runs at once"),
        Setting("worker_runtime", "auto", help="auto (docker when an engine answers), docker, or process"),
        Setting(
            "container_runtime",
            defaults.DEFAULT_CONTAINER_RUNTIME,
            help="runc, or runsc (gVisor; `make docker-base` registers it): this worker's containers and sandboxes",
        ),
        Setting("debian_slim_image", "python:{python}-slim", help="what Image.debian_slim() builds on"),
        # A cluster of machines (issue 18): see docs/DEPLOY.md.
        Setting(
            "registry",
            None,
            help="host:port of the image registry: builders push layers there, workers pull what they lack; "
            "`minimodal up` runs one when it is a loopback address and nothing answers",
        ),
        Setting(
            "worker_address",
            defaults.DEFAULT_WORKER_ADDRESS,
            help="the address the API and clients reach this worker's host at: sandboxes' ports are published there",
        ),
        Setting("advertised_redis_url", None, help="Redis URL the API gives joining workers (default: its own)"),
        Setting("advertised_database_url", None, help="database URL the API gives joining workers (default: its own)"),
        Setting("map_request_size", defaults.DEFAULT_MAP_REQUEST_SIZE, int),
        Setting("task_target_ms", defaults.DEFAULT_TASK_TARGET_MS, int),
        Setting("max_inputs_per_task", defaults.DEFAULT_MAX_INPUTS_PER_TASK, int),
        Setting("heartbeat_seconds", defaults.DEFAULT_HEARTBEAT_SECONDS, float),
        Setting("log_level", "INFO"),
        Setting("log_json", False, _bool, "JSON lines logs"),
        # Scheduling and placement (issue 4): what a worker advertises, and the dispatcher's timings.
        Setting("worker_id", None, help="this worker's id and queue suffix; unique per process; generated when unset"),
        Setting("worker_cpu", float(os.cpu_count() or 1), float, "cores this worker offers (default: the machine's)"),
        Setting("worker_memory", _machine_memory_mb(), int, "MiB this worker offers (default: the machine's)"),
        Setting("worker_gpu", None, help="GPUs this worker offers, e.g. 'T4:2,A100'; unset: ask nvidia-smi"),
        Setting("worker_min_slots", defaults.DEFAULT_WORKER_MIN_SLOTS, int, "floor of a worker's scaled concurrency"),
        Setting(
            "worker_blank_runners",
            defaults.DEFAULT_BLANK_RUNNERS,
            int,
            "runner processes kept started with no function loaded: a new function's first call loads into one",
        ),
        Setting(
            "worker_blank_containers",
            defaults.DEFAULT_BLANK_CONTAINERS,
            int,
            "containers kept started with no function loaded, per recent image (renamed after their owner when bound)",
        ),
        Setting(
            "worker_blank_idle_seconds",
            float(defaults.DEFAULT_BLANK_IDLE_SECONDS),
            float,
            "blank runners of an image (or limits) no call has used for this long are stopped",
        ),
        Setting(
            "worker_scaledown_window",
            float(defaults.DEFAULT_SCALEDOWN_WINDOW),
            float,
            "idle seconds before the autoscaler lowers a worker's concurrency",
        ),
        Setting("dispatcher_lease_seconds", defaults.DEFAULT_DISPATCHER_LEASE_SECONDS, float),
        Setting(
            "direct_dispatch",
            True,  # warm p50 13.8 -> 7.7 ms here once the enqueue skips the dispatcher's wake-up (issue 21)
            _bool,
            "the API sends a call's task itself when its user is the only one waiting (the dispatcher leads)",
        ),
        Setting("lost_task_seconds", defaults.DEFAULT_LOST_TASK_SECONDS, float),
        Setting("rebuild_grace_seconds", defaults.DEFAULT_REBUILD_GRACE_SECONDS, float),
        # Abuse limits (issue 11): see SECURITY.md.
        Setting("call_rate_limit", defaults.DEFAULT_CALL_RATE_LIMIT, float, "call submissions/s per token; 0: off"),
        Setting("call_rate_burst", defaults.DEFAULT_CALL_RATE_BURST, int, "submissions at once above the rate"),
        Setting("max_item_size", defaults.DEFAULT_MAX_ITEM_SIZE, int, "bytes of one generator item"),
        Setting("max_log_line", defaults.DEFAULT_MAX_LOG_LINE, int, "characters of one log entry"),
        Setting("max_log_bytes", defaults.DEFAULT_MAX_LOG_BYTES, int, "characters one input may print"),
        Setting(
            "sandbox_output_bytes",
            defaults.DEFAULT_SANDBOX_OUTPUT_BYTES,
            int,
            "bytes of one sandbox process's stdout (or stderr) kept in Redis; past them, a marker and then nothing",
        ),
    ]
}


def home() -> Path:
    """The state directory, ``$MINIMODAL_HOME`` or ``~/.minimodal``."""
    return Path(os.environ.get("MINIMODAL_HOME") or defaults.DEFAULT_HOME).expanduser()


def profile_path() -> Path:
    return home() / "config.toml"


_PROFILES: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}  # path -> ((mtime ns, size), parsed)


def read_profile() -> dict[str, Any]:
    """The profile file's values; parsed again only when the file changed (every request reads it)."""
    path = profile_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    version = (stat.st_mtime_ns, stat.st_size)
    cached = _PROFILES.get(str(path))
    if cached is not None and cached[0] == version:
        return dict(cached[1])
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidError(f"the profile {path} is not valid TOML: {exc}; fix or delete it") from exc
    _PROFILES[str(path)] = (version, values)
    return dict(values)


def write_profile(values: dict[str, Any]) -> Path:
    """Merge ``values`` into the profile file (mode 0600: it holds a token)."""
    merged = {**read_profile(), **values}
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, value in sorted(merged.items()):
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{name} = {value}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name} = "{escaped}"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def get(name: str) -> Any:
    """The value of one setting (environment, then profile, then default)."""
    setting = _SETTINGS.get(name)
    if setting is None:
        raise InvalidError(f"unknown setting {name!r}; known: {', '.join(sorted(_SETTINGS))}")
    raw = os.environ.get(setting.env_var)
    source = setting.env_var
    if raw is None:
        profile_value = read_profile().get(name)
        if profile_value is None:
            return setting.default
        raw, source = str(profile_value), f"{profile_path()}:{name}"
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise InvalidError(f"{source}={raw!r} is not a valid {name}: {exc}") from exc


def settings() -> dict[str, Setting]:
    return dict(_SETTINGS)


def database_url() -> str:
    return get("database_url") or f"sqlite:///{home() / 'minimodal.db'}"
