"""`honcho start` runs the stack from the Procfile."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests
from redis import Redis

from tests.conftest import ROOT, RedisServer, free_port, missing, wait_for


def test_honcho_start_runs_every_procfile_process_and_stops_them_all(redis_server: RedisServer, tmp_path: Path) -> None:
    honcho = shutil.which("honcho") or str(Path(sys.executable).parent / "honcho")
    if not Path(honcho).exists():
        missing("honcho is not installed")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMODAL_")}
    env.update(
        {
            "MINIMODAL_HOME": str(tmp_path),
            "MINIMODAL_REDIS_URL": redis_server.url.replace("/0", "/3"),
            "MINIMODAL_API_PORT": str(port),
            "MINIMODAL_FLOWER_PORT": str(free_port()),
            "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
            "PYTHONPATH": str(ROOT),
        }
    )
    process = subprocess.Popen(
        [honcho, "start"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    try:

        def healthy() -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
            return False

        wait_for(healthy, 60, "the API started by honcho")
        redis = Redis.from_url(env["MINIMODAL_REDIS_URL"])
        wait_for(lambda: list(redis.scan_iter("mm:worker:*")), 60, "the worker started by honcho to beat")
        redis.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    for name in ("api.1", "dispatcher.1", "worker.1", "beat.1", "flower.1"):
        assert f"{name}" in output, output[-3000:]
    leftover = subprocess.run(["pgrep", "-f", "mm_app.celery_app|-m mm_app"], capture_output=True, text=True).stdout
    own = [pid for pid in leftover.split() if f"MINIMODAL_HOME={tmp_path}" in _environ(pid)]
    assert own == []


def _environ(pid: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""
