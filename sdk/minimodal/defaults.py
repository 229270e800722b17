"""Default values, one line of why each. Settings in :mod:`minimodal.config` start from these."""

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"  # the API listens on loopback unless configured otherwise
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8000
DEFAULT_HOME = "~/.minimodal"  # state: profile, SQLite database, local Redis, logs, pids
DEFAULT_API_THREADS = 64  # threads per API process: each long-poll and each open WebSocket holds one
DEFAULT_API_GRACEFUL_SECONDS = 30  # on SIGTERM/SIGHUP an API process finishes its requests for at most this long
DEFAULT_LOCAL_REDIS_PORT = 6390  # the Redis `minimodal up` starts itself (not 6379: avoid clashing with a system one)
DEFAULT_INLINE_PAYLOAD_SIZE = 2 * 1024 * 1024  # as Modal: larger args and results travel as blobs
DEFAULT_MAX_PAYLOAD_SIZE = 256 * 1024 * 1024  # refused by the SDK before sending and by the API with 413
DEFAULT_RESULT_TTL = 24 * 3600  # seconds outputs and inputs stay in Redis after they are written
DEFAULT_STREAM_TTL = 3600  # seconds generator items are kept after their call ends, for reconnecting clients
DEFAULT_LOG_STREAM_LENGTH = 10000  # lines kept per call and per app; older ones are trimmed
DEFAULT_QUOTA = 5  # tasks of one user in flight at once
DEFAULT_WEIGHT = 1  # share of one user when several wait
DEFAULT_TIMEOUT = 300  # seconds one input may run (Modal's default)
DEFAULT_SCALEDOWN_WINDOW = 60  # seconds a warm runner stays idle before it is stopped
DEFAULT_MAP_REQUEST_SIZE = 100  # inputs the SDK sends in one HTTP request of a .map
DEFAULT_TASK_TARGET_MS = 50  # the dispatcher packs fast inputs into tasks of about this much work
DEFAULT_MAX_INPUTS_PER_TASK = 100  # ...but never more inputs than this in one Celery task
DEFAULT_LONG_POLL_SECONDS = 25  # one output long-poll waits at most this long before answering empty
DEFAULT_HEARTBEAT_SECONDS = 2  # workers and the dispatcher refresh their heartbeat this often
DEFAULT_BASE_IMAGES_SECONDS = 30  # a Docker worker lists its engine's python:X.Y-slim bases this often (heartbeat)
# ---- Scheduling and placement (issue 4) ----
DEFAULT_FUNCTION_CPU = 0.125  # cores a function holds when it does not say (Modal's default)
DEFAULT_FUNCTION_MEMORY = 128  # MiB a function holds when it does not say (Modal's default)
DEFAULT_TASK_OVERHEAD_US = 2000  # fair-share cost of one task beyond its inputs' run time (dispatch, runner hop)
DEFAULT_DRR_QUANTUM_US = 2000  # budget a weight-1 user is granted per round: small, so a round is ~1 task each
DEFAULT_WORKER_MIN_SLOTS = 0  # the autoscaler may scale a worker's concurrency down to this when idle
DEFAULT_BLANK_RUNNERS = 2  # runner processes a worker keeps started, no function loaded yet
# Containers likewise, per image (for the last few images run). Docker's labels are fixed at creation, so
# one started blank is renamed mm-u<user>-<function id>-... when bound instead of labelled with its owner
DEFAULT_BLANK_CONTAINERS = 2
DEFAULT_BLANK_IDLE_SECONDS = 600  # blanks of an image no call has started a runner of for this long are stopped
DEFAULT_DISPATCHER_LEASE_SECONDS = 5.0  # a standby dispatcher takes over this long after the leader stops renewing
DEFAULT_LOST_TASK_SECONDS = 30.0  # a dispatched task its live worker does not hold is re-queued after this
DEFAULT_REBUILD_GRACE_SECONDS = 10.0  # inputs younger than this may still be on their way into Redis: not rebuilt
DEFAULT_DISPATCH_LOG_LENGTH = 10000  # dispatch decisions kept in the capped dispatch log stream
DEFAULT_SCALE_EVENTS_LENGTH = 1000  # autoscaler decisions kept in the capped scale events list
# ---- Abuse limits (issue 11) ----
DEFAULT_CALL_RATE_LIMIT = 100.0  # call submissions (requests) per second per token, sustained; 0 turns it off
DEFAULT_CALL_RATE_BURST = 200  # ...and how many may come at once above that rate
DEFAULT_MAX_ITEM_SIZE = 64 * 1024 * 1024  # bytes of one generator item; a bigger one is replaced by a marker
DEFAULT_MAX_LOG_LINE = 64 * 1024  # characters of one log entry; the rest is cut with a marker
DEFAULT_MAX_LOG_BYTES = 16 * 1024 * 1024  # characters one input may print; past them, a marker and then nothing
DEFAULT_SANDBOX_TIMEOUT = 300  # seconds a sandbox lives when Sandbox.create sets no timeout (Modal's 5 minutes)
MAX_SANDBOX_TIMEOUT = 86400  # the longest timeout a sandbox may ask for (24 h, as Modal)
DEFAULT_SANDBOX_CPU = 0.125  # cores a sandbox reserves when it sets no cpu (as a function)
DEFAULT_SANDBOX_MEMORY = 128  # MiB a sandbox reserves when it sets no memory; its container's limit is 2 GiB then
DEFAULT_SANDBOX_OUTPUT_BYTES = 64 * 1024 * 1024  # bytes of one sandbox process's stdout (or stderr) kept; then a marker
DEFAULT_WORKER_ADDRESS = "127.0.0.1"  # where a worker publishes sandboxes' ports (reachable from this host only)
# ---- Output (issue 17) ----
DEFAULT_PARTIAL_LINE_SECONDS = 0.15  # a printed line without its end is delivered after this long (a prompt, a bar)
DEFAULT_CONTAINER_RUNTIME = "runc"  # a worker's containers: runc (host kernel) or runsc (gVisor); see SECURITY.md
