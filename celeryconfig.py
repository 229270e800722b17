"""Celery settings of MiniModal (``app.config_from_object("celeryconfig")``).

The broker URL comes from MINIMODAL_REDIS_URL (or the profile). See
../shared/reference/celery_notes.md for why each pitfall setting is what it is.
"""

from minimodal import config as _config
from mm_app import keyspace as _keyspace

broker_url = _config.get("redis_url") or "redis://127.0.0.1:6379/0"
broker_connection_retry_on_startup = True
# Longest function timeout is 24 h; a message is redelivered only after this (issue: heartbeats).
_visibility = 25 * 3600
broker_transport_options = {
    "visibility_timeout": _visibility,
    "socket_keepalive": True,
    "health_check_interval": 10,
    "retry_on_timeout": True,
}
task_serializer = "json"
accept_content = ["json"]
result_backend = None
task_ignore_result = True  # outputs go to per-call Redis streams, written by the task itself
task_acks_late = True  # a task is removed from the broker only once it has finished
worker_prefetch_multiplier = 1  # the dispatcher decides who runs next, not the worker's prefetch
task_default_queue = _keyspace.QUEUE_CPU
task_routes = {_keyspace.TASK_EXECUTE: {"queue": _keyspace.QUEUE_CPU}}
worker_hijack_root_logger = False
# Task events cost four Redis publishes a call; Flower turns worker events on when it runs
# (its enable_events broadcast), so they are paid only while someone watches.
worker_send_task_events = False
task_send_sent_event = False
# Beat: RedBeat keeps the schedule in Redis (rebuilt from the database by mm_app/beat.py); one beat leads
# by RedBeat's lock, a second one waits for it. Ticks at least every second so a 1 s Period is on time.
redbeat_redis_url = broker_url
redbeat_redis_options: dict = {}
redbeat_key_prefix = _keyspace.REDBEAT_PREFIX
redbeat_lock_timeout = 10  # a dead leader's lock expires after this many seconds; a standby takes over
beat_max_loop_interval = 1
