"""``minimodal serve FILE[::APP]``: the app's web endpoints live, reloaded when a local source file changes.

Each version is deployed under ``APP-dev`` (as Modal's serve suffixes its URLs with ``-dev``) by a fresh
interpreter (``minimodal deploy``), so every reload imports the edited files anew and the URLs stay the
same. The server's deploy semantics give the rest: the new version takes new calls at once, calls in
flight finish on the old one, and an unchanged image is not built again. Ctrl-C (or ``--timeout``) stops
the dev app. Files are watched with watchfiles (Rust's notify): Python files under the app file's folder
(the package root for a file of a package).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

from ._client import Client
from .exception import Error

_SKIP_PARTS = {"__pycache__", ".git", ".venv", "venv", "node_modules"}


def _watch_root(file_part: str) -> Path:
    folder = Path(file_part).resolve().parent
    while (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


def _python_change(change: object, path: str) -> bool:
    parts = Path(path).parts
    return path.endswith(".py") and not any(p in _SKIP_PARTS or p.startswith(".") for p in parts)


def _dev_name(file_part: str, variable: str) -> str:
    """The name the dev version is deployed under: the app's name (or the file's stem), plus ``-dev``."""
    probe = (
        "import sys; from minimodal._target import import_file; from minimodal.app import App\n"
        f"m = import_file({file_part!r})\n"
        "apps = {k: v for k, v in vars(m).items() if isinstance(v, App)}\n"
        f"v = {variable!r} or ('app' if len(apps) != 1 else next(iter(apps)))\n"
        "print(apps[v].name or '')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise Error(f"cannot import {file_part}: {done.stderr.strip().splitlines()[-1] if done.stderr else ''}")
    return (done.stdout.strip() or Path(file_part).stem) + "-dev"


def _env() -> dict[str, str]:
    return {**os.environ, "MINIMODAL_SERVE": "1"}


def _deploy(ref: str, name: str) -> bool:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "minimodal", "deploy", ref, "--name", name], capture_output=True, text=True, env=_env()
    )
    if done.returncode != 0:
        print(f"serve: the new version failed to deploy: {done.stderr.strip()}", file=sys.stderr, flush=True)
        return False
    for line in done.stdout.splitlines():
        if line.startswith("  ") and "http" in line:
            print(f"  => {line.strip()}", flush=True)
    print(f"serve: {name} is live ({time.monotonic() - started:.1f} s)", flush=True)
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    from watchfiles import watch

    file_part, _, variable = args.ref.partition("::")
    if not Path(file_part).is_file():
        print(f"minimodal: no such file: {file_part}", file=sys.stderr)
        return 2
    name = _dev_name(file_part, variable)
    ref = f"{file_part}::{variable}" if variable else file_part
    if not _deploy(ref, name):
        return 1
    stop = threading.Event()
    if args.timeout:
        timer = threading.Timer(args.timeout, stop.set)
        timer.daemon = True  # Ctrl-C before the timeout must not wait for it
        timer.start()
    print(f"serve: watching {_watch_root(file_part)} for changes; Ctrl-C stops {name}", flush=True)
    try:
        for _changes in watch(_watch_root(file_part), watch_filter=_python_change, stop_event=stop, debounce=50):
            print("serve: source changed, deploying a new version", flush=True)
            _deploy(ref, name)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        try:
            Client.from_config().request("POST", f"/v1/deployments/{quote(name, safe='')}/stop", timeout=120)
            print(f"serve: stopped {name}", flush=True)
        except Error as exc:
            print(f"serve: could not stop {name}: {exc}", file=sys.stderr)
    return 0
