"""``minimodal up`` / ``down``: run the whole stack on this machine, under ``$MINIMODAL_HOME``.

Starts a Redis (a ``redis-server`` child with AOF) when none is configured or reachable, the image
registry when ``MINIMODAL_REGISTRY`` is set and none answers there (``mm_app/image_registry.py``), creates the
default admin user and writes the profile, then starts the Procfile's processes (API, dispatcher,
worker, beat, Flower), each in its own process group with its log under ``logs/`` and its pid under
``run/``. ``down`` stops everything ``up`` started, Redis last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select

from minimodal import config, protocol

from . import credential, image_registry
from .api.auth import hash_token
from .api.users import create_user
from .database import Database
from .models import UserRecord

# name -> arguments after `python -m mm_app`; the Procfile lists the same processes for honcho.
PROCESSES = ["api", "dispatcher", "worker", "beat", "flower"]


def _redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (RedisError, OSError, ValueError):
        return False


class Stack:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or config.home()
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"
        self.registry: subprocess.Popen[bytes] | None = None  # the image registry, when this process started it

    # ---- pieces ----

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.home
            )
        self._pid_file(name).write_text(str(process.pid))
        return process

    def ensure_redis(self) -> str:
        configured = config.get("redis_url")
        if configured and _redis_answers(configured):
            return configured
        port = config.get("local_redis_port")
        local = f"redis://127.0.0.1:{port}/0"
        if _redis_answers(local):
            return local
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit(
                "minimodal up: no Redis answers and redis-server is not installed (apt-get install "
                "redis-server), or set MINIMODAL_REDIS_URL"
            )
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "redis",
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            dict(os.environ),
        )
        for _ in range(100):
            if _redis_answers(local):
                return local
            time.sleep(0.1)
        raise SystemExit(f"minimodal up: redis-server did not start; see {self.log_dir / 'redis.log'}")

    def ensure_registry(self) -> None:
        """Run the image registry when MINIMODAL_REGISTRY is set (a loopback address) and none answers there."""
        address = config.get("registry")
        if not address or image_registry.answers(address):
            return
        if not image_registry.is_loopback(address):  # another machine's: say so, builds will say more
            print(f"minimodal up: nothing answers at MINIMODAL_REGISTRY={address}; builds cannot push there")
            return
        storage = self.home / "registry"
        self.registry = image_registry.start(
            address, storage, lambda argv: self._spawn("registry", argv, dict(os.environ))
        )

    def bootstrap_user(self) -> str:
        """The default admin user's token: the profile's if still valid, else a new one."""
        db = Database(config.database_url())
        db.create_all()
        token = config.read_profile().get("token")
        with db.write() as session:
            if token and session.scalar(select(UserRecord).where(UserRecord.token_hash == hash_token(token))):
                db.dispose()
                return str(token)
            existing = session.scalar(select(UserRecord).where(UserRecord.name == "default"))
            if existing is not None:
                token = protocol.new_token()
                existing.token_hash = hash_token(token)
            else:
                token = create_user(
                    session,
                    "default",
                    quota=config.get("default_quota"),
                    weight=config.get("default_weight"),
                    is_admin=True,
                )
        db.dispose()
        return token

    def _wait_ready(self, server_url: str, redis_url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        redis = Redis.from_url(redis_url)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(server_url + "/health", timeout=2) as reply:
                    if reply.status == 200 and list(redis.scan_iter(protocol.worker_key("*"), count=100)):
                        return
            for name in ("api", "dispatcher", "worker"):
                if not self.alive(name):
                    raise SystemExit(f"minimodal up: {name} exited; see {self.log_dir / (name + '.log')}")
            time.sleep(0.2)
        raise SystemExit(f"minimodal up: the stack did not answer within {timeout:.0f} s; see {self.log_dir}")

    def alive(self, name: str) -> bool:
        try:
            os.kill(int(self._pid_file(name).read_text()), 0)
            return True
        except (OSError, ValueError):
            return False

    # ---- commands ----

    def up(self, *, detach: bool) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if any(self.alive(name) for name in PROCESSES):
            print("minimodal up: the stack is already running (`minimodal down` stops it)")
            return 0
        redis_url = self.ensure_redis()
        self.ensure_registry()
        token = self.bootstrap_user()
        server_url = f"http://{config.get('api_host')}:{config.get('api_port')}"
        profile = config.write_profile({"server_url": server_url, "token": token, "redis_url": redis_url})
        env = {
            **os.environ,
            "MINIMODAL_REDIS_URL": redis_url,
            "MINIMODAL_HOME": str(self.home),
            "MINIMODAL_SERVER_URL": server_url,  # workers reach the volume store through the API
            "MINIMODAL_WORKER_TOKEN": credential.worker_token(),  # ...with the workers' credential
        }
        for name in PROCESSES:
            self._spawn(name, [sys.executable, "-m", "mm_app", name], env)
        self._wait_ready(server_url, redis_url)
        print(
            f"MiniModal is up: API {server_url}, Redis {redis_url}, Flower http://127.0.0.1:{config.get('flower_port')}"
        )
        print(f"profile {profile} (token of user 'default'); logs in {self.log_dir}")
        if detach:
            return 0
        stop = {"now": False}
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.update(now=True))
        try:
            while not stop["now"] and all(self.alive(n) for n in ("api", "dispatcher", "worker")):
                time.sleep(0.5)
        finally:
            self.down()
        return 0

    def down(self) -> int:
        names = [*PROCESSES, "registry", "redis"]
        pids = {}
        for name in names:
            with contextlib.suppress(OSError, ValueError):
                pids[name] = int(self._pid_file(name).read_text())
        for name in names[:-1] + ["redis"]:  # redis last: the others flush to it on the way down
            pid = pids.get(name)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.alive(name):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            self._pid_file(name).unlink(missing_ok=True)
        if self.registry is not None:
            self.registry.poll()  # reaped above by its pid; this tells its Popen so
        removed = remove_leftover_containers(self.home)
        print(json.dumps({"stopped": sorted(pids), "containers_removed": removed}))
        return 0


def remove_leftover_containers(home: Path) -> int:
    """Remove the containers this stack's workers started (e.g. those of a killed worker)."""
    from workers.runtimes import docker_client

    client = docker_client()
    if client is None:
        return 0
    from workers.runtimes.docker import remove_all_containers

    try:
        return remove_all_containers(client, {"minimodal.home": str(home)})
    finally:
        client.close()
