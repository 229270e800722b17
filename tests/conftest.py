"""Fixtures that start real services: redis-server on a free port, and the MiniModal processes.

A service missing locally skips the tests that need it; under CI=true it fails them instead.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis

from workers.runtimes import docker_client

CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def missing(what: str) -> None:
    """Skip locally, fail in CI."""
    if CI:
        pytest.fail(f"{what} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen
    client: Redis


def start_redis(
    tmp: Path, *, port: int | None = None, fresh: bool = True, extra: list[str] | None = None
) -> RedisServer:
    """A redis-server on a free port (or ``port``); ``extra`` arguments override the defaults."""
    server = shutil.which("redis-server")
    if server is None:
        missing("redis-server is not installed (make test installs it)")
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            *(extra or []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = Redis(port=port)

    def pings() -> bool:
        with contextlib.suppress(Exception):
            return bool(client.ping())
        return False

    wait_for(pings, 10, "redis-server to answer")
    if fresh:
        assert client.dbsize() == 0, "a fresh redis-server must start empty"
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, process, client)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_process(server.process)


@dataclass
class Stack:
    """A running control plane: API, dispatcher and one worker, all real processes."""

    home: Path
    env: dict[str, str]
    url: str
    redis: RedisServer
    admin_token: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    redis_client: Redis | None = None

    def spawn(self, name: str, *argv: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.home / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [PYTHON, "-m", "mm_app", *argv],
                env={**self.env, **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def new_user(self, name: str, **fields: int) -> str:
        reply = requests.post(
            f"{self.url}/v1/users",
            json={"name": name, **fields},
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        assert reply.status_code == 201, reply.text
        return reply.json()["token"]

    def workers(self) -> list[dict]:
        client = self.redis_client or self.redis.client
        return [json.loads(raw) for k in client.scan_iter("mm:worker:*") if (raw := client.get(k))]

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process(process)
        if self.redis_client is not None:
            self.redis_client.close()


def bootstrap_admin(env: dict[str, str]) -> str:
    """Create the admin user in the stack's database (as `minimodal up` does); return its token."""
    code = (
        "from minimodal import config; from mm_app.database import Database; from mm_app.accounts import create_user\n"
        "db = Database(config.database_url()); db.create_all()\n"
        "with db.write() as s: print(create_user(s, 'admin', quota=5, weight=1, is_admin=True))\n"
    )
    return subprocess.run(
        [PYTHON, "-c", code], env=env, check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


TEST_MAX_PAYLOAD = 8 * 1024 * 1024  # small, so that the 413 path is cheap to exercise


def start_stack(
    redis_server: RedisServer,
    home: Path,
    *,
    runtime: str,
    db: int,
    worker_env: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    database_url: str | None = None,
) -> Stack:
    """API, dispatcher and one worker of the given runtime, on Redis database ``db``.

    ``worker_env`` is set for the worker only (e.g. a data directory of its own, as on another host);
    ``env`` for every process (e.g. ``MINIMODAL_REGISTRY``); ``database_url``: the metadata store
    (default: SQLite under ``home``).
    """
    port = free_port()
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    env = {
        **os.environ,
        "MINIMODAL_HOME": str(home),
        "MINIMODAL_REDIS_URL": redis_url,
        "MINIMODAL_DATABASE_URL": database_url or f"sqlite:///{home / 'mm.db'}",
        "MINIMODAL_API_PORT": str(port),
        "MINIMODAL_SERVER_URL": f"http://127.0.0.1:{port}",
        "MINIMODAL_MAX_PAYLOAD_SIZE": str(TEST_MAX_PAYLOAD),
        "MINIMODAL_WORKER_CONCURRENCY": "4",
        "MINIMODAL_API_PROCESSES": "2",  # gunicorn: more than one API process, whatever the machine's cores
        "MINIMODAL_WORKER_RUNTIME": runtime,
        "PYTHONPATH": str(ROOT),
        "MINIMODAL_WORKER_TOKEN": secrets.token_urlsafe(24),  # as `minimodal up`: the API and workers share it
        **(env or {}),
    }
    env.pop("MINIMODAL_TOKEN", None)
    stack = Stack(home, env, f"http://127.0.0.1:{port}", redis_server, bootstrap_admin(env))
    stack.redis_client = Redis.from_url(redis_url)
    try:
        stack.spawn("api", "api")
        stack.spawn("dispatcher", "dispatcher")
        stack.spawn("worker", "worker", extra_env=worker_env)

        def ready() -> bool:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited at start:\n{stack.log(name)[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(stack.url + "/health", timeout=1).ok and bool(stack.workers())
            return False

        wait_for(ready, 60, "the API to answer and a worker to beat")
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster (Debian's ``postgresql``) on a free port, for the whole session."""
    server = start_postgres()
    yield server
    server.stop()


def stack_database_url(request: pytest.FixtureRequest, name: str) -> str | None:
    """PostgreSQL when MINIMODAL_TEST_DATABASE=postgres (`make test-postgres`), else None (SQLite)."""
    choice = os.environ.get("MINIMODAL_TEST_DATABASE", "sqlite")
    if choice == "sqlite":
        return None
    if choice != "postgres":
        raise pytest.UsageError(f"MINIMODAL_TEST_DATABASE must be sqlite or postgres, not {choice!r}")
    return request.getfixturevalue("postgres_server").new_database(name)


@pytest.fixture(scope="session")
def stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """A stack whose worker runs functions in runner processes (fast; most tests)."""
    stack = start_stack(
        redis_server,
        tmp_path_factory.mktemp("mmhome"),
        runtime="process",
        db=0,
        database_url=stack_database_url(request, "mm_stack"),
    )
    yield stack
    stack.stop()


def use_stack(stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Create a fresh user on ``stack`` and point the in-process SDK at it; return the token."""
    name = "u" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    token = stack.new_user(name)
    for key in ("MINIMODAL_HOME", "MINIMODAL_SERVER_URL", "MINIMODAL_MAX_PAYLOAD_SIZE"):
        monkeypatch.setenv(key, stack.env[key])
    monkeypatch.setenv("MINIMODAL_TOKEN", token)
    return token


@pytest.fixture
def user(stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh user per test on the process stack."""
    return use_stack(stack, request, monkeypatch)


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster in a temporary directory; ``new_database`` makes an empty database."""

    port: int
    data: Path
    as_user: list[str]  # runuser prefix when the tests run as root (PostgreSQL refuses to run as root)
    pg_ctl: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "stop", "-D", str(self.data), "-m", "fast", "-w"], check=False)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start of a private cluster on a free port (a skip, or a failure in CI, when missing)."""
    try:
        import psycopg  # noqa: F401 - the driver of the `postgres` extra
    except ImportError:
        missing("psycopg is not installed (pip install 'minimodal[postgres]'; make install does)")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = str(bins[-1]) if bins else shutil.which("initdb")
    if initdb is None:
        missing("PostgreSQL is not installed (make system-deps: apt-get install postgresql)")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    root = Path(tempfile.mkdtemp(prefix="mm-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses root: run it as the package's `postgres` user
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"],
        check=True,
        capture_output=True,
    )
    # A server whose TimeZone is not UTC, as many are: timestamps must still come back in UTC.
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    options += " -c timezone=Pacific/Auckland"
    started = subprocess.run(
        [*as_user, pg_ctl, "start", "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "-t", "60"],
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {started.stderr}\n{log[-2000:]}")
    return PostgresServer(port, data, as_user, pg_ctl)


def docker_engine() -> Any:
    """A docker SDK client of the local engine with the base image present, or a skip (a failure in CI)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # a failed negotiation leaks the SDK's socket
        client = docker_client()
        gc.collect()
    if client is None:
        missing("no Docker engine answers (make test starts dockerd)")
    slim = f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim"
    try:
        client.images.get(slim)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound, without importing docker here
        client.close()
        missing(f"the image {slim} is missing (make docker-base builds it)")
    return client


@pytest.fixture(scope="session")
def docker_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose worker runs every function in a container of its image."""
    client = docker_engine()
    stack = start_stack(redis_server, tmp_path_factory.mktemp("mmdocker"), runtime="docker", db=1)
    try:
        yield stack
    finally:
        stack.stop()
        leftover = client.containers.list(all=True, filters={"label": f"minimodal.home={stack.home}"})
        client.close()
        assert leftover == [], f"containers left behind: {[c.name for c in leftover]}"


@pytest.fixture
def docker_user(docker_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh user per test on the Docker stack."""
    return use_stack(docker_stack, request, monkeypatch)
