"""Secrets at rest: Fernet-encrypted values in the database, decrypted only by a worker for a call.

The key is ``MINIMODAL_SECRET_KEY`` when set (it must be, and be the same, on every host of a
multi-host stack), else a key generated once into ``MINIMODAL_HOME/secret.key`` with mode 0600. Values
are never logged and never leave the control plane except in the call frame a worker sends its runner
(see ``sdk/minimodal/_runner.py``): they are not in the container's configuration, so ``docker inspect`` does
not show them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session

from minimodal import config, protocol
from minimodal.exception import InvalidError, NotFoundError, ServiceError

from .models import SecretRecord, utcnow

KEY_FILE = "secret.key"
MAX_VALUES = 1000  # variables in one secret
MAX_VALUE_BYTES = 64 * 1024  # bytes of one value
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_fernet: Fernet | None = None  # per process


def _key_file() -> Path:
    return config.home() / KEY_FILE


def _load_key() -> tuple[str, bytes]:
    setting = config.get("secret_key")
    if setting:
        return "setting", setting.encode()
    path = _key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole to a private temp file, then linked: of two processes that start together (the
        # API's gunicorn workers), one link wins and both read the same complete key, never an empty file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(Fernet.generate_key())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return str(path), path.read_bytes().strip()


def key() -> str:
    """The secret key, for a worker joining from another machine (``GET /internal/cluster``)."""
    return _load_key()[1].decode()


def fernet() -> Fernet:
    """This process's Fernet, from the setting or the key file (read once)."""
    global _fernet
    if _fernet is None:
        source, key = _load_key()
        try:
            _fernet = Fernet(key)
        except ValueError as exc:
            raise InvalidError(f"the secret key ({source}) is not a Fernet key: {exc}") from None
    return _fernet


def check_values(values: Any, where: str = "secret") -> dict[str, str]:
    if not isinstance(values, dict):
        raise InvalidError(f"{where}: values must be an object of NAME -> string")
    if len(values) > MAX_VALUES:
        raise InvalidError(f"{where}: at most {MAX_VALUES} variables")
    for name, value in values.items():
        if not isinstance(name, str) or not _VAR.match(name):
            raise InvalidError(f"{where}: {name!r} is not a valid environment variable name")
        if not isinstance(value, str) or len(value.encode()) > MAX_VALUE_BYTES:
            raise InvalidError(f"{where}: the value of {name} must be a string of at most {MAX_VALUE_BYTES} bytes")
    return dict(values)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidError(f"secret name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
    return name


def encrypt(values: dict[str, str]) -> bytes:
    return fernet().encrypt(json.dumps(values).encode())


def decrypt(record: SecretRecord) -> dict[str, str]:
    try:
        return json.loads(fernet().decrypt(record.data))
    except InvalidToken:
        label = record.name or record.id
        raise ServiceError(
            f"cannot decrypt the secret {label}: this host's key differs from the one it was stored with; "
            "set the same MINIMODAL_SECRET_KEY on the API and every worker"
        ) from None


def describe(record: SecretRecord) -> dict[str, Any]:
    """What the API may show of a secret: never its values."""
    return {
        "name": record.name,
        "keys": sorted(record.keys),
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }


def named(session: Session, user_id: int, name: str) -> SecretRecord | None:
    return session.scalar(select(SecretRecord).where(SecretRecord.user_id == user_id, SecretRecord.name == name))


def put(session: Session, user_id: int, name: str, values: dict[str, str], overwrite: bool) -> SecretRecord:
    record = named(session, user_id, check_name(name))
    values = check_values(values, f"secret {name!r}")
    if record is not None and not overwrite:
        raise InvalidError(f"secret {name!r} already exists; pass overwrite (CLI: --force) to replace its values")
    if record is None:
        record = SecretRecord(id=protocol.new_id("st"), user_id=user_id, name=name)
        session.add(record)
    record.keys, record.data, record.updated_at = sorted(values), encrypt(values), utcnow()
    session.flush()
    return record


def attach(session: Session, user_id: int, tag: str, specs: Any) -> list[str]:
    """The ids of a function's secrets at deploy, in order; a named secret that does not exist fails it.

    ``specs`` are ``{"name": ...}`` (a stored secret) or ``{"values": {...}}`` (stored now, unnamed).
    """
    if not isinstance(specs, list):
        raise InvalidError(f"function {tag!r}: secrets must be a list")
    ids = []
    for spec in specs:
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            record = named(session, user_id, spec["name"])
            if record is None:
                raise NotFoundError(
                    f"function {tag!r}: secret {spec['name']!r} does not exist; "
                    f"create it with `minimodal secret create {spec['name']} KEY=VALUE`"
                )
            ids.append(record.id)
        elif isinstance(spec, dict) and "values" in spec:
            values = check_values(spec["values"], f"function {tag!r}: a secret")
            record = SecretRecord(
                id=protocol.new_id("st"), user_id=user_id, name=None, keys=sorted(values), data=encrypt(values)
            )
            session.add(record)
            ids.append(record.id)
        else:
            raise InvalidError(f"function {tag!r}: each secret is {{'name': ...}} or {{'values': {{...}}}}")
    return ids


def environment(session: Session, user_id: int, ids: Iterable[str]) -> dict[str, str]:
    """The variables of these secrets, later ones overriding earlier ones (only the user's own)."""
    ids = list(ids)
    if not ids:
        return {}
    records = {
        r.id: r
        for r in session.scalars(select(SecretRecord).where(SecretRecord.id.in_(ids), SecretRecord.user_id == user_id))
    }
    env: dict[str, str] = {}
    for secret_id in ids:
        record = records.get(secret_id)
        if record is None:
            raise NotFoundError(f"a secret of this function ({secret_id}) was deleted; deploy again")
        env.update(decrypt(record))
    return env
