"""``Secret``: environment variables a function gets without them being in its code.

Example::

    app = minimodal.App()

    @app.function(secrets=[minimodal.Secret.from_name("db"), minimodal.Secret.from_dict({"MODE": "prod"})])
    def f():
        return os.environ["DB_PASSWORD"]

A named secret is stored on the server, encrypted (``minimodal secret create db DB_PASSWORD=...``);
the others are sent at deploy and stored the same way. A function's secrets are set in its
``os.environ`` while each input runs, later secrets overriding earlier ones (app-level ones first).
Values never come back from the API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .exception import InvalidError


def _parse_dotenv(text: str, source: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``export`` prefixes, ``#`` comments and single or double quotes are understood."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise InvalidError(f"{source}:{number}: expected KEY=VALUE, got {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if raw.strip().partition("=")[2].strip().startswith('"'):
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name] = value
    return values


class Secret:
    """A named secret of the server, or values to send with the deploy."""

    def __init__(self, *, name: str | None = None, values: dict[str, str] | None = None) -> None:
        self._name, self._values = name, values

    def __repr__(self) -> str:
        return f"Secret.from_name({self._name!r})" if self._name else f"Secret(<{len(self._values or {})} values>)"

    @property
    def name(self) -> str | None:
        return self._name

    def _spec(self) -> dict[str, Any]:
        """What the deploy request carries for this secret."""
        return {"name": self._name} if self._name is not None else {"values": dict(self._values or {})}

    @staticmethod
    def from_name(name: str, *, environment_name: str | None = None, required_keys: list[str] | None = None) -> Secret:
        """The user's stored secret ``name``; a deploy fails, naming it, when it does not exist."""
        if not isinstance(name, str) or not name:
            raise InvalidError(f"Secret.from_name({name!r}): give the secret's name")
        if required_keys:
            keys = set(Secret._show(name)["keys"])
            missing = [k for k in required_keys if k not in keys]
            if missing:
                raise InvalidError(f"secret {name!r} lacks the keys {missing}")
        return Secret(name=name)

    @staticmethod
    def from_dict(env_dict: dict[str, str | None]) -> Secret:
        """These values (``None`` values are dropped)."""
        if not isinstance(env_dict, dict) or not all(isinstance(k, str) for k in env_dict):
            raise InvalidError("Secret.from_dict() takes a dict of str -> str")
        values = {k: v for k, v in env_dict.items() if v is not None}
        bad = [k for k, v in values.items() if not isinstance(v, str)]
        if bad:
            raise InvalidError(f"Secret.from_dict(): the values of {bad} are not strings")
        return Secret(values=values)

    @staticmethod
    def from_dotenv(path: str | os.PathLike[str] | None = None, *, filename: str = ".env") -> Secret:
        """The variables of a ``.env`` file: ``path`` is the file, or a folder holding ``filename`` (default: cwd)."""
        target = Path(path) if path is not None else Path.cwd()
        if target.is_dir():
            target = target / filename
        if not target.is_file():
            raise InvalidError(f"Secret.from_dotenv(): no such file {target}")
        return Secret(values=_parse_dotenv(target.read_text(), str(target)))

    @staticmethod
    def from_local_environ(env_keys: list[str]) -> Secret:
        """These variables of the local environment, as they are now; a missing one is an error."""
        missing = [k for k in env_keys if k not in os.environ]
        if missing:
            raise InvalidError(f"Secret.from_local_environ(): {missing} not set in the local environment")
        return Secret(values={k: os.environ[k] for k in env_keys})

    # ---- management (the CLI uses these) ----

    @staticmethod
    def create(name: str, values: dict[str, str], *, overwrite: bool = False) -> dict[str, Any]:
        """Store a named secret; returns its description (never its values)."""
        from ._client import Client

        body = {"name": name, "values": values, "overwrite": overwrite}
        return Client.from_config().request("POST", "/v1/secrets", json=body)

    @staticmethod
    def list_secrets() -> list[dict[str, Any]]:
        """The user's named secrets: names and variable names, never values."""
        from ._client import Client

        return Client.from_config().request("GET", "/v1/secrets")["secrets"]

    @staticmethod
    def _show(name: str) -> dict[str, Any]:
        from ._client import Client

        return Client.from_config().request("GET", f"/v1/secrets/{name}")

    @staticmethod
    def delete(name: str) -> None:
        from ._client import Client

        Client.from_config().request("DELETE", f"/v1/secrets/{name}")


def check_secrets(where: str, secrets: Any) -> list[Secret]:
    """The ``secrets=`` option as a list of Secret, or a clear error."""
    if secrets is None:
        return []
    if isinstance(secrets, Secret) or not isinstance(secrets, list | tuple):
        raise InvalidError(f"{where}: secrets= takes a list of minimodal.Secret")
    for secret in secrets:
        if not isinstance(secret, Secret):
            raise InvalidError(f"{where}: secrets= takes a list of minimodal.Secret, got {secret!r}")
    return list(secrets)
