"""``minimodal up`` / ``down`` / ``status``: run the whole stack on this machine under supervisord.

``up`` starts supervisord (from PyPI's ``supervisor``) with one program per process: a Redis
(``redis-server`` with AOF) when none is configured or reachable, the image registry when
``MINIMODAL_REGISTRY`` is a loopback address and none answers there (``mm_app/image_registry.py``),
then the Procfile's processes (API,
dispatcher, worker, beat, Flower), each in its own process group with its log under ``logs/``.
supervisord restarts a process that dies (at once; with growing delays if it keeps dying at start)
and logs it in ``logs/supervisord.log``. ``status`` asks supervisord over its socket in ``run/``;
``down`` stops supervisord, which stops every process (Redis last), then removes leftover containers.
Without ``--detach``, ``up`` stays in the foreground until Ctrl-C / SIGTERM, then runs ``down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select

from minimodal import config, protocol
from mm_app import keyspace

from . import credential, image_registry
from .accounts import create_user, hash_token
from .database import Database
from .models import UserRecord

# name -> arguments after `python -m mm_app`; the Procfile lists the same processes for honcho.
PROCESSES = ["api", "dispatcher", "worker", "beat", "flower"]
GROUP = "stack"  # supervisord's group of the PROCESSES: `stack:api`, ...
SOCKET = "supervisor.sock"  # under run/: supervisord's XML-RPC socket (sdk/minimodal/cli.py looks for it too)
STOP_SECONDS = {"api": 35, "worker": 30}  # SIGTERM to SIGKILL: the API's graceful 30 s, Celery's warm shutdown
_CONF = Path(__file__).with_name("supervisord.conf")
_PROGRAM = Path(__file__).with_name("supervisord-program.conf")


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
        self.socket = self.run_dir / SOCKET

    # ---- supervisord ----

    def supervisor(self) -> Any:
        """supervisord's XML-RPC interface (``supervisor.*`` methods) over its socket in ``run/``."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def supervisor_pid(self) -> int | None:
        """supervisord's pid while it runs, else None."""
        try:
            pid = int((self.run_dir / "supervisord.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def processes(self) -> list[dict[str, Any]]:
        """Each supervised process: name, state, pid, restarts, uptime (seconds); [] when supervisord is not up."""
        if self.supervisor_pid() is None:
            return []
        try:
            infos = self.supervisor().getAllProcessInfo()
        except (OSError, xmlrpc.client.Error):
            return []
        spawns = self._spawns()
        return [
            {
                "name": info["name"],
                "state": info["statename"],
                "pid": info["pid"] or None,
                "restarts": max(0, spawns.get(info["name"], 0) - 1),
                "uptime": info["now"] - info["start"] if info["statename"] == "RUNNING" else None,
            }
            for info in infos
        ]

    def _spawns(self) -> dict[str, int]:
        """Starts of each process since supervisord started, from its log (it keeps no count itself)."""
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (self.log_dir / "supervisord.log").read_text(errors="replace").splitlines():
                if "supervisord started with pid" in line:
                    counts.clear()
                elif " spawned: '" in line:
                    name = line.split(" spawned: '", 1)[1].split("'", 1)[0]
                    counts[name] = counts.get(name, 0) + 1
        return counts

    def pids(self) -> dict[str, int]:
        """name -> pid of each running process."""
        return {p["name"]: p["pid"] for p in self.processes() if p["pid"]}

    def _write_conf(self, programs: dict[str, list[str]], autostart: set[str]) -> Path:
        values = {"home": self.home, "log_dir": self.log_dir, "run_dir": self.run_dir, "socket": self.socket}
        text = string.Template(_CONF.read_text()).substitute(values)
        for name, argv in programs.items():
            text += string.Template(_PROGRAM.read_text()).substitute(
                values,
                name=name,
                command=shlex.join(argv),
                autostart=str(name in autostart).lower(),
                stopwait=STOP_SECONDS.get(name, 15),
            )
        # One group: supervisord stops a group's processes all at once, and groups one after another in
        # reverse priority, so the stack's processes stop together, then Redis (not in it) last.
        text += f"\n[group:{GROUP}]\nprograms={','.join(PROCESSES)}\npriority=10\n"
        path = self.run_dir / "supervisord.conf"
        path.write_text(text)
        return path

    def _start_supervisord(self, conf: Path, env: dict[str, str]) -> None:
        with open(self.log_dir / "supervisord.out", "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=self.home,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                if self.supervisor().getState()["statename"] == "RUNNING":
                    return
            time.sleep(0.1)
        raise SystemExit(f"minimodal up: supervisord did not start; see {self.log_dir / 'supervisord.out'}")

    # ---- pieces ----

    def redis_plan(self) -> tuple[str, list[str] | None]:
        """The Redis URL to use, and the command of the redis-server to run when none answers."""
        configured = config.get("redis_url")
        if configured and _redis_answers(configured):
            return configured, None
        port = config.get("local_redis_port")
        local = f"redis://127.0.0.1:{port}/0"
        if _redis_answers(local):
            return local, None
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit(
                "minimodal up: no Redis answers and redis-server is not installed (apt-get install "
                "redis-server), or set MINIMODAL_REDIS_URL"
            )
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes"]
        return local, [*argv, "--save", "", "--maxmemory-policy", "noeviction"]

    def registry_plan(self) -> list[str] | None:
        """The image registry's argv when MINIMODAL_REGISTRY is a loopback address and none answers there."""
        address = config.get("registry")
        if not address or image_registry.answers(address):
            return None
        if not image_registry.is_loopback(address):  # another machine's: say so, builds will say more
            print(f"minimodal up: nothing answers at MINIMODAL_REGISTRY={address}; builds cannot push there")
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = image_registry.config_file(address, self.home / "registry", self.run_dir)
        return image_registry.command(address, conf)

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
                    answered = reply.status == 200 and list(redis.scan_iter(keyspace.worker_key("*"), count=100))
                # Up means every process has also stayed up past its startsecs (STARTING until then), so
                # that `minimodal status` right after `up --detach` shows them all RUNNING.
                processes = self.processes()
                if answered and processes and all(p["state"] == "RUNNING" for p in processes):
                    return
            for process in self.processes():
                if process["state"] in ("FATAL", "EXITED", "STOPPED", "UNKNOWN"):
                    log = self.log_dir / f"{process['name']}.log"
                    raise SystemExit(f"minimodal up: {process['name']} is {process['state']}; see {log}")
            time.sleep(0.2)
        raise SystemExit(f"minimodal up: the stack did not answer within {timeout:.0f} s; see {self.log_dir}")

    # ---- commands ----

    def up(self, *, detach: bool) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.supervisor_pid() is not None:
            print("minimodal up: the stack is already running (`minimodal down` stops it)")
            return 0
        redis_url, redis_argv = self.redis_plan()
        registry_argv = self.registry_plan()
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
        programs = {"redis": redis_argv} if redis_argv else {}
        if registry_argv:  # supervised like the rest; started with Redis, before the processes that build
            programs["registry"] = registry_argv
        programs |= {name: [sys.executable, "-m", "mm_app", name] for name in PROCESSES}
        self._start_supervisord(self._write_conf(programs, autostart={"redis", "registry"}), env)
        try:
            for _ in range(100):
                if _redis_answers(redis_url):
                    break
                time.sleep(0.1)
            else:
                raise SystemExit(f"minimodal up: redis-server did not start; see {self.log_dir / 'redis.log'}")
            if registry_argv:
                address = config.get("registry")
                for _ in range(300):
                    if image_registry.answers(address, timeout=1):
                        break
                    time.sleep(0.1)
                else:
                    raise SystemExit(f"minimodal up: the registry did not answer at {address}; see its log")
            supervisor = self.supervisor()
            for name in PROCESSES:
                supervisor.startProcess(f"{GROUP}:{name}", False)
            self._wait_ready(server_url, redis_url)
        except BaseException:
            self.down()
            raise
        print(
            f"MiniModal is up: API {server_url}, Redis {redis_url}, Flower http://127.0.0.1:{config.get('flower_port')}"
        )
        print(f"profile {profile} (token of user 'default'); logs in {self.log_dir}; `minimodal status` lists them")
        if detach:
            return 0
        stop = {"now": False}
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.update(now=True))
        try:
            while not stop["now"] and self.supervisor_pid() is not None:
                time.sleep(0.5)
        finally:
            self.down()
        return 0

    def status(self) -> int:
        """Print each process (state, pid, restarts, uptime); 1 when supervisord or any process is not running."""
        processes = self.processes()
        if not processes:
            print(f"down: no stack runs under {self.home} (`minimodal up` starts one)")
            return 1
        print(f"{'process':12} {'state':10} {'pid':>8} {'restarts':>9} {'uptime':>10}")
        for p in processes:
            uptime = f"{p['uptime']:.0f} s" if p["uptime"] is not None else "-"
            print(f"{p['name']:12} {p['state']:10} {p['pid'] or '-':>8} {p['restarts']:>9} {uptime:>10}")
        return 0 if all(p["state"] == "RUNNING" for p in processes) else 1

    def down(self) -> int:
        pid = self.supervisor_pid()
        stopped = sorted(self.pids())
        groups = list(self.pids().values())
        if pid is not None:
            # SIGTERM: supervisord stops each program (its process group) in reverse priority, Redis last.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + sum(STOP_SECONDS.values()) + 60
            while time.monotonic() < deadline and self.supervisor_pid() is not None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if self.supervisor_pid() is not None:  # supervisord hung: nothing may outlive `down`
                for leader in [pid, *groups]:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(leader, signal.SIGKILL)
        (self.run_dir / "supervisord.pid").unlink(missing_ok=True)
        removed = remove_leftover_containers(self.home)
        print(json.dumps({"stopped": stopped, "containers_removed": removed}))
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
