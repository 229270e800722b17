"""The cluster's image registry: Debian's ``docker-registry`` (Distribution 2.8), run by ``minimodal up``.

Builders push every layer image there and workers pull what their engine lacks (``workers/images.py``),
so a function built on one machine runs on any. ``minimodal up`` starts one when ``MINIMODAL_REGISTRY``
is a loopback address (``127.0.0.1:5000``) and nothing answers there: its configuration
(``registry.yml`` next to this module) goes in a temporary directory, its storage in
``MINIMODAL_HOME/registry``. Docker trusts plain HTTP to 127.0.0.0/8, so no engine needs
``insecure-registries`` for it; docs/DEPLOY.md says how to serve one to other machines (TLS in front).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from string import Template

SERVER = "docker-registry"  # Debian's package and binary name
CONFIG_TEMPLATE = Path(__file__).with_name("registry.yml")


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0] or address
    return host == "localhost" or host.startswith("127.") or host == "[::1]"


def answers(address: str, timeout: float = 2) -> bool:
    """True when a registry (the Distribution API, ``/v2/``) answers at ``address``."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=timeout) as reply:
            return reply.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # a registry that wants credentials still answers
    except (OSError, ValueError):
        return False


def config_file(address: str, storage: Path) -> Path:
    """Write the registry's configuration into a new temporary directory; return its path."""
    storage.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="mm-registry-")) / "config.yml"
    path.write_text(Template(CONFIG_TEMPLATE.read_text()).substitute(addr=address, storage=str(storage)))
    return path


def command(address: str, config: Path) -> list[str]:
    """The argv that serves a registry at ``address`` with the configuration ``config``."""
    if not is_loopback(address):
        raise SystemExit(
            f"minimodal: {address} is not a loopback address; MiniModal runs a registry on loopback only "
            "(serve it to other machines behind TLS: docs/DEPLOY.md)"
        )
    server = shutil.which(SERVER)
    if server is None:
        raise SystemExit(
            f"minimodal: MINIMODAL_REGISTRY={address}, nothing answers there and {SERVER} is not installed "
            f"(apt-get install {SERVER}, or `make system-deps`)"
        )
    return [server, "serve", str(config)]


def start(
    address: str, storage: Path, spawn: Callable[[list[str]], subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """Start a registry at ``address`` with ``spawn`` (which records its pid); return it once it answers."""
    config = config_file(address, storage)
    try:
        process = spawn(command(address, config))
        deadline = time.monotonic() + 30
        while not answers(address, timeout=1):
            if process.poll() is not None:
                raise SystemExit(f"minimodal: {SERVER} exited with status {process.returncode} at start")
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                raise SystemExit(f"minimodal: {SERVER} did not answer at {address} within 30 s")
            time.sleep(0.1)
        return process
    finally:  # read once at start: the temporary directory is not needed while it runs
        shutil.rmtree(config.parent, ignore_errors=True)
