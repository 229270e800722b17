"""The workers' credential: the bearer token of the API's internal routes (``/internal/...``).

A worker reaches the volume store only through the API, with this token; no user token (not even an
admin's) opens those routes. It is ``MINIMODAL_WORKER_TOKEN`` when set (a multi-host stack sets the
same value on the API and every worker; ``minimodal up`` passes it to the processes it starts), else a
token generated once into ``MINIMODAL_HOME/worker.token`` with mode 0600.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from minimodal import config

TOKEN_FILE = "worker.token"
_token: str | None = None  # per process


def _token_file() -> Path:
    return config.home() / TOKEN_FILE


def _load() -> str:
    setting = config.get("worker_token")
    if setting:
        return str(setting)
    path = _token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole to a private temp file, then linked: of two processes that start together, one
        # link wins and both read the same complete token (never an empty, half-written file).
        tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def worker_token() -> str:
    """This process's worker credential, from the setting or the token file (read once)."""
    global _token
    if _token is None:
        _token = _load()
    return _token


def is_worker_token(token: str) -> bool:
    return hmac.compare_digest(token.encode(), worker_token().encode())
