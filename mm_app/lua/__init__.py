"""The control plane's Lua scripts, one ``.lua`` file each in this folder, and the one way to run them.

A script runs atomically in Redis; the ones here are every multi-key step that must not interleave
with another client's (the scheduler's enqueue, take, hold, finish and reclaim in :mod:`mm_app.pending`,
the dispatcher's lease, the rate limit, output publishing, the worker heartbeat, the autoscaler's shrink).

Every script takes its inputs by name, in one shape (``_args.lua``): ``ARGV[1]`` is a JSON object of
its arguments plus ``"keys"``, the names of ``KEYS`` in order; ``ARGV[2...]`` carry bytes JSON cannot
hold (payloads), where the script says so. A script checks what it gets and answers a missing, unknown
or mistyped key or argument with an error reply naming it. Each file starts with its KEYS, ARGV and
reply. A first line ``-- uses: _name`` puts the library ``_name.lua`` before the script (``_args.lua``
goes before every script); the scripts are registered once per client with ``register_script`` and run
by ``EVALSHA``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from redis import Redis

USES = "-- uses: "


@cache
def source(name: str) -> str:
    """The full text Redis runs for ``name``: ``_args.lua``, the libraries it uses, then ``name.lua``."""
    text = _read(name)
    libs = ["_args"]
    first = text.partition("\n")[0]
    if first.startswith(USES):
        libs += [lib.strip() for lib in first[len(USES) :].split(",")]
    return "".join(_read(lib) + "\n" for lib in libs) + text


def names() -> list[str]:
    """Every script (not the libraries) in this folder."""
    return sorted(
        f.name.removesuffix(".lua")
        for f in resources.files(__name__).iterdir()
        if f.name.endswith(".lua") and not f.name.startswith("_")
    )


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Script:
    """One script registered with one Redis client; call it with its keys and arguments by name.

    Example::

        renew = Script(redis, "lease_renew")
        renew({"lease": "mm:dispatch:leader"}, {"holder": "d1", "ttl_ms": 5000})
    """

    def __init__(self, redis: Redis, name: str) -> None:
        self.name = name
        self._script = redis.register_script(source(name))

    def __call__(self, keys: dict[str, str], args: dict[str, Any], data: list[Any] | None = None) -> Any:
        """Run it: ``keys`` and ``args`` by name, ``data`` the bytes after the JSON (``ARGV[2...]``)."""
        argv = [json.dumps({"keys": list(keys), **args}), *(data or ())]
        return self._script(keys=list(keys.values()), args=argv)
