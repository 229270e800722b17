"""``python -m mm_app PROCESS``: one process of the stack (what the Procfile and ``minimodal up`` run)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import uuid

from minimodal import config
from mm_app import keyspace

# What every control-plane process imports beyond the SDK: the `server` extra of pyproject.toml.
SERVER_MODULES = (
    "flask",
    "flask_sock",
    "sqlalchemy",
    "redis",
    "celery",
    "kombu",
    "docker",
    "redbeat",
    "cryptography",
    "gunicorn",
    "supervisor",
)


def require_server() -> None:
    """Exit with one line naming what is missing when the `server` extra is not installed (SDK only)."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"minimodal: the server is not installed (missing: {', '.join(missing)}); "
            "install it with: pip install 'minimodal[server]'",
            file=sys.stderr,
        )
        sys.exit(2)


def _logging(component: str) -> None:
    from .observability import configure_logging

    configure_logging(component, level=config.get("log_level"), json_lines=config.get("log_json"))


def run_api(args: argparse.Namespace) -> None:
    from .server import serve

    # gunicorn (mm_app/server.py): MINIMODAL_API_PROCESSES processes of MINIMODAL_API_THREADS threads.
    serve(args.host or config.get("api_host"), args.port or config.get("api_port"))


def _celery(*argv: str) -> None:
    quiet = ["--quiet"] if config.get("log_json") else []  # Celery's banner is not a log line: no JSON for it
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "mm_app.celery_app", *quiet, *argv])


def run_worker(args: argparse.Namespace) -> None:
    from workers.runtimes import docker_client

    concurrency = args.concurrency or config.get("worker_concurrency")
    has_docker = config.get("worker_runtime") != "process" and docker_client() is not None
    # The dispatcher places each task on a worker and sends it to that worker's own queue (one queue
    # per worker, never per user); image builds stay on the shared build queue of Docker workers.
    worker_id = config.get("worker_id") or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    os.environ["MINIMODAL_WORKER_ID"] = worker_id  # the worker context registers under the same id
    os.environ["MINIMODAL_WORKER_CONCURRENCY"] = str(concurrency)  # its slots are Celery's threads
    queues = [keyspace.worker_queue(worker_id)] + ([keyspace.QUEUE_BUILD] if has_docker else [])
    name = f"mm-worker-{os.getpid()}@%h"
    _celery(
        "worker",
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-Q",
        ",".join(queues),
        # The dispatcher never sends a worker more tasks than its free slots, so the prefetch window
        # never has to bind; at 1 x concurrency kombu stops polling when it fills and only re-arms on
        # its next loop tick (up to ~1 s idle when all slots finish together). 2 x keeps it polling.
        "--prefetch-multiplier",
        "2",
        "-l",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "-n",
        name,
    )


def run_beat(args: argparse.Namespace) -> None:
    # RedBeat: the schedule lives in Redis, rebuilt from the database (mm_app/beat.py, mm_app/schedules.py).
    _celery("beat", "-l", "INFO", "-S", "mm_app.beat:Scheduler")


def run_flower(args: argparse.Namespace) -> None:
    _celery("flower", "--address=127.0.0.1", f"--port={args.port or config.get('flower_port')}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mm_app", description="MiniModal control-plane processes")
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(handler=run_api)
    commands.add_parser("dispatcher").set_defaults(handler=lambda a: __import__("mm_app.dispatcher").dispatcher.main())
    worker = commands.add_parser("worker")
    worker.add_argument("--concurrency", "-c", type=int)
    worker.set_defaults(handler=run_worker)
    join = commands.add_parser("join", help="start a worker on this machine for the cluster of --server")
    __import__("mm_app.join").join.add_arguments(join)
    join.set_defaults(handler=lambda a: __import__("mm_app.join").join.main(a))
    commands.add_parser("beat").set_defaults(handler=run_beat)
    flower = commands.add_parser("flower")
    flower.add_argument("--port", type=int)
    flower.set_defaults(handler=run_flower)
    up = commands.add_parser("up")
    up.add_argument("--detach", action="store_true")
    up.set_defaults(handler=lambda a: sys.exit(__import__("mm_app.stack").stack.Stack().up(detach=a.detach)))
    commands.add_parser("down").set_defaults(
        handler=lambda a: sys.exit(__import__("mm_app.stack").stack.Stack().down())
    )
    commands.add_parser("status").set_defaults(
        handler=lambda a: sys.exit(__import__("mm_app.stack").stack.Stack().status())
    )
    args = parser.parse_args()
    require_server()
    _logging(args.command)
    args.handler(args)


if __name__ == "__main__":
    main()
