"""``minimodal sandbox list|logs|terminate|exec``: the CLI of sandboxes."""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from ._client import Client
from .protocol import SANDBOX_ENTRYPOINT, unb64
from .sandbox import Sandbox


def _age(created_at: str | None) -> str:
    if not created_at:
        return "-"
    then = datetime.fromisoformat(created_at)
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _print_now(client: Client, sandbox_id: str, fd: int, out: Any) -> None:
    """What the entrypoint wrote to ``fd`` so far, without waiting for more."""
    cursor = "0-0"
    while True:
        reply = client.request(
            "GET",
            f"/v1/sandboxes/{sandbox_id}/processes/{SANDBOX_ENTRYPOINT}/output",
            params={"fd": fd, "cursor": cursor, "timeout": 0},
        )
        for chunk in reply["chunks"]:
            out.buffer.write(unb64(chunk))
        out.flush()
        if reply["eof"] or not reply["chunks"]:
            return
        cursor = reply["cursor"]


def cmd_sandbox(args: argparse.Namespace) -> int:
    verb = args.sandbox_command
    client = Client.from_config()
    if verb == "list":
        params = {} if args.all else {"state": "running"}
        for info in client.request("GET", "/v1/sandboxes", params=params)["sandboxes"]:
            code = "" if info["returncode"] is None else f" ({info['returncode']})"
            command = " ".join(info["command"]) or "-"
            print(f"{info['sandbox_id']:22} {info['state'] + code:16} {_age(info['created_at']):>5}  {command}")
        return 0
    if verb == "logs":
        _print_now(client, args.sandbox_id, 1, sys.stdout)
        _print_now(client, args.sandbox_id, 2, sys.stderr)
        return 0
    if verb == "terminate":
        Sandbox.from_id(args.sandbox_id).terminate()
        print(f"sandbox {args.sandbox_id} terminated")
        return 0
    sandbox = Sandbox.from_id(args.sandbox_id)
    process = sandbox.exec(*args.cmd, text=False)

    def copy(stream: Any, out: Any) -> None:
        for line in stream:
            out.buffer.write(line)
            out.flush()

    readers = [
        threading.Thread(target=copy, args=(process.stdout, sys.stdout), daemon=True),
        threading.Thread(target=copy, args=(process.stderr, sys.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    if not sys.stdin.isatty():
        stdin = sys.stdin.buffer
        read = getattr(stdin, "read1", stdin.read)  # what has arrived, not a full 64 KiB (a buffered stdin)
        for data in iter(lambda: read(65536), b""):
            process.stdin.write(data)
            process.stdin.drain()
    process.stdin.write_eof()
    process.stdin.drain()
    for reader in readers:
        reader.join()
    return process.wait()


def add_commands(commands: Any) -> None:
    """Add the ``sandbox`` command group to the CLI's subparsers."""
    sandbox = commands.add_parser("sandbox", help="sandboxes: containers for arbitrary commands")
    verbs = sandbox.add_subparsers(dest="sandbox_command", required=True)
    listing = verbs.add_parser("list", help="your running sandboxes, newest first: id, state, age, command")
    listing.add_argument("--all", action="store_true", help="ended ones too")
    verbs.add_parser("logs", help="what a sandbox's command printed so far").add_argument("sandbox_id")
    verbs.add_parser("terminate", help="end a sandbox now").add_argument("sandbox_id")
    run = verbs.add_parser("exec", help="run a command in a sandbox; stdin is passed on, the exit code returned")
    run.add_argument("sandbox_id")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    sandbox.set_defaults(handler=cmd_sandbox)
