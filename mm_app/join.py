"""``minimodal worker join``: start a worker on another machine, given the API's URL and the workers' token.

The API answers ``GET /internal/cluster`` (workers' credential only) with what a worker needs beyond
its own machine: Redis (the broker and data plane), the database (function records, the status
recorder, secrets), the image registry and the secrets' key. Flags override what the API advertises
(its own addresses are often loopback). The values go in this machine's profile
(``MINIMODAL_HOME/config.toml``, mode 0600), so a later ``python -m mm_app worker`` restarts the same
worker, and then the worker process replaces this one. Nothing is read from the control plane's disk:
volumes move through the API, images through the registry.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import requests

from minimodal import config

SETTINGS = ("server_url", "worker_token", "redis_url", "database_url", "registry", "secret_key")


def fetch(server: str, token: str) -> dict[str, Any]:
    """The control plane's settings for workers, from ``GET /internal/cluster``."""
    url = server.rstrip("/") + "/internal/cluster"
    try:
        reply = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=15)
    except requests.RequestException as exc:
        raise SystemExit(
            f"minimodal worker join: cannot reach the API at {server} ({exc}); is --server right?"
        ) from exc
    if reply.status_code in (401, 403):
        raise SystemExit(
            "minimodal worker join: the API refused the token; --token takes the workers' credential "
            "(the control plane's MINIMODAL_WORKER_TOKEN, or its MINIMODAL_HOME/worker.token), not a user's token"
        )
    if not reply.ok:
        raise SystemExit(f"minimodal worker join: {url} answered HTTP {reply.status_code}: {reply.text[:300]}")
    return dict(reply.json())


def resolve(args: argparse.Namespace) -> dict[str, str]:
    """The worker's settings: the API's answer, overridden by the flags, checked where they can be."""
    from redis import Redis  # the server extra: imported after `python -m mm_app` checked it is there
    from redis.exceptions import RedisError
    from sqlalchemy.engine import make_url

    cluster = fetch(args.server, args.token)
    values = {
        "server_url": args.server.rstrip("/"),
        "worker_token": args.token,
        "redis_url": args.redis or cluster.get("redis_url"),
        "database_url": args.database or cluster.get("database_url"),
        "registry": args.registry or cluster.get("registry"),
        "secret_key": cluster.get("secret_key"),
    }
    if not values["redis_url"]:
        raise SystemExit("minimodal worker join: the API advertises no Redis; pass --redis URL")
    try:
        Redis.from_url(values["redis_url"], socket_connect_timeout=5).ping()
    except (RedisError, OSError, ValueError) as exc:
        raise SystemExit(
            f"minimodal worker join: cannot reach Redis at {values['redis_url']} ({exc}); pass --redis with an "
            "address this machine reaches (or set MINIMODAL_ADVERTISED_REDIS_URL on the API)"
        ) from exc
    database = make_url(values["database_url"] or "")
    if database.get_backend_name() == "sqlite" and not Path(database.database or "").exists():
        raise SystemExit(
            f"minimodal worker join: the control plane's database is SQLite ({values['database_url']}), which "
            "a worker on another machine cannot open; run PostgreSQL and pass --database (docs/DEPLOY.md)"
        )
    return {name: value for name, value in values.items() if value}


def main(args: argparse.Namespace) -> None:
    values = resolve(args)
    profile = config.write_profile(values)
    print(
        f"joining {values['server_url']}: Redis {values['redis_url']}, registry {values.get('registry') or 'none'}; "
        f"settings in {profile}",
        file=sys.stderr,
    )
    for name, value in values.items():
        os.environ["MINIMODAL_" + name.upper()] = value
    argv = [sys.executable, "-m", "mm_app", "worker"] + (["-c", str(args.concurrency)] if args.concurrency else [])
    os.execv(sys.executable, argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="the API's URL, e.g. https://minimodal.example.com")
    parser.add_argument("--token", required=True, help="the workers' credential (MINIMODAL_WORKER_TOKEN)")
    parser.add_argument("--redis", help="Redis URL as this machine reaches it (default: what the API advertises)")
    parser.add_argument("--database", help="database URL as this machine reaches it (default: the API's)")
    parser.add_argument("--registry", help="image registry host:port (default: the API's MINIMODAL_REGISTRY)")
    parser.add_argument("--concurrency", "-c", type=int, help="calls at once (default: MINIMODAL_WORKER_CONCURRENCY)")
