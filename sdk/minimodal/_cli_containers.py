"""``minimodal container ...`` and ``minimodal shell FILE::FUNCTION``: the user's running containers.

A terminal (``shell``, ``container exec --tty``) is a WebSocket to ``/v1/containers/{id}/tty``: the
local terminal goes raw, what is typed goes up as ``{"in": base64}``, what the remote process writes
comes back as ``{"out": base64}``, then ``{"exit": code}``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import shutil
import signal
import sys
import threading
from typing import Any
from urllib.parse import quote

from ._cli_state import print_json, print_table
from ._client import Client
from ._stream import print_log
from ._target import import_file, pick_target
from ._websocket import HandshakeError, WebSocket
from .exception import InvalidError, from_response


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_container(args: argparse.Namespace) -> int:
    client = Client.from_config()
    verb = args.container_command
    if verb == "list":
        containers = client.request("GET", "/v1/containers")["containers"]
        if args.json:
            print_json(containers)
        else:
            rows = [
                [c["id"], c.get("app_name") or c["app"], c["function"], _when(c.get("started_at")), c["runtime"]]
                for c in containers
            ]
            print_table(rows, ["container id", "app", "function", "started (UTC)", "runtime"])
        return 0
    if verb == "logs":
        for event in client.request("GET", f"/v1/containers/{args.id}/logs")["logs"]:
            print_log(event)
        return 0
    if verb == "stop":
        client.request("POST", f"/v1/containers/{args.id}/stop")
        print(f"stopped {args.id}")
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise InvalidError("give the command after --: minimodal container exec ID -- CMD ...")
    if args.tty:
        return terminal(client, args.id, cmd)
    reply = client.request(
        "POST", f"/v1/containers/{args.id}/exec", json={"cmd": cmd, "timeout": args.timeout}, timeout=args.timeout + 30
    )
    sys.stdout.buffer.write(base64.b64decode(reply["output"]))
    sys.stdout.flush()
    return int(reply["exit_code"] or 0)


def cmd_shell(args: argparse.Namespace) -> int:
    from .functions import Function

    file_part, _, name = args.ref.partition("::")
    module = import_file(file_part)
    app, target = pick_target(module, name or None)
    if not isinstance(target, Function):
        raise InvalidError(f"{args.ref} is a local entrypoint: give FILE::FUNCTION")
    client = Client.from_config()
    with app.run():
        reply = client.request("POST", f"/v1/functions/{target.object_id}/shell", timeout=180)
        return terminal(client, reply["container_id"], args.cmd or ["/bin/sh"], secrets=True, stop_after=True)


def terminal(
    client: Client, container_id: str, cmd: list[str], *, secrets: bool = False, stop_after: bool = False
) -> int:
    """Attach this terminal to ``cmd`` on a pseudo-terminal in the container; its exit code."""
    cols, rows = shutil.get_terminal_size()
    query = f"cmd={quote(json.dumps(cmd))}&rows={rows}&cols={cols}&secrets={int(secrets)}&stop_after={int(stop_after)}"
    url = f"{client.server_url}/v1/containers/{container_id}/tty?{query}"
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    try:
        ws = WebSocket.connect(url, headers, timeout=30)
    except HandshakeError as exc:
        try:
            error = json.loads(exc.body)["error"]
        except (ValueError, KeyError):
            error = {"message": f"HTTP {exc.status}"}
        raise from_response(exc.status, error.get("type"), error["message"]) from None
    send_lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with send_lock, contextlib.suppress(OSError):
            ws.send(json.dumps(message))

    stdin = sys.stdin.fileno()
    saved = None
    if os.isatty(stdin):
        import termios
        import tty

        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)

        def resized(*_: Any) -> None:
            c, r = shutil.get_terminal_size()
            send({"resize": [r, c]})

        signal.signal(signal.SIGWINCH, resized)

    def forward_input() -> None:
        while True:
            try:
                data = os.read(stdin, 4096)
            except OSError:
                data = b""
            if not data:
                send({"close": True})
                return
            send({"in": base64.b64encode(data).decode()})

    threading.Thread(target=forward_input, name="minimodal-tty-in", daemon=True).start()
    code: int | None = None
    try:
        while True:
            message = ws.recv(None)
            if message is None:
                break
            payload = json.loads(message)
            if "out" in payload:
                os.write(sys.stdout.fileno(), base64.b64decode(payload["out"]))
            elif "exit" in payload:
                code = payload["exit"]
                break
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        ws.close()
    return int(code or 0)


def add_commands(commands: Any) -> None:
    """Add ``container`` and ``shell`` to the CLI's subparsers."""
    container = commands.add_parser("container", help="your running containers")
    verbs = container.add_subparsers(dest="container_command", required=True)
    verbs.add_parser("list", help="app, function, id and start of each").add_argument("--json", action="store_true")
    verbs.add_parser("logs", help="what the inputs that ran in a container printed").add_argument("id")
    verbs.add_parser("stop", help="stop a container (an input running there is retried)").add_argument("id")
    run = verbs.add_parser("exec", help="run a command in a container: container exec ID -- CMD ...")
    run.add_argument("id")
    run.add_argument("--tty", "-t", action="store_true", help="interactive, on a terminal")
    run.add_argument("--timeout", type=float, default=60, help="seconds the command may run (default 60)")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    container.set_defaults(handler=cmd_container)

    shell = commands.add_parser("shell", help="a shell in a function's container: its image, volumes and secrets")
    shell.add_argument("ref", help="FILE.py::FUNCTION")
    shell.add_argument("--cmd", nargs="+", help="what to run instead of /bin/sh")
    shell.set_defaults(handler=cmd_shell)
