"""The ``minimodal`` command line.

``minimodal run FILE[::NAME]`` runs a local entrypoint (or a function) of an app file; ``up``,
``down`` and ``status`` manage a local stack; ``user`` manages users (admin token); ``sandbox``
lists, reads, ends and runs commands in sandboxes.
"""

from __future__ import annotations

import argparse
import inspect
import signal
import subprocess
import sys
from typing import Any

from . import _cli_containers, _cli_objects, _cli_sandbox, _cli_state, _deploy_cli, config
from ._cli_state import print_json
from ._client import Client
from ._stream import print_log
from ._target import import_file, pick_target
from .app import LocalEntrypoint
from .exception import Error
from .runtime import enable_output


def _parse_entrypoint_args(fn: Any, argv: list[str]) -> dict[str, Any]:
    """Turn an entrypoint's parameters into ``--name value`` options, typed by annotation or default."""
    parser = argparse.ArgumentParser(prog=getattr(fn, "__name__", "entrypoint"))
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, SyntaxError):
        signature = inspect.signature(fn)
    for param in signature.parameters.values():
        kind = param.annotation if param.annotation in (int, float, str, bool) else None
        if kind is None and param.default is not inspect.Parameter.empty and param.default is not None:
            kind = type(param.default)
        flag = "--" + param.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=param.name, action=argparse.BooleanOptionalAction, default=param.default)
        else:
            required = param.default is inspect.Parameter.empty
            default = None if required else param.default
            parser.add_argument(flag, dest=param.name, type=kind or str, required=required, default=default)
    return vars(parser.parse_args(argv))


def cmd_run(args: argparse.Namespace) -> int:
    file_part, _, name = args.ref.partition("::")
    module = import_file(f"-m={file_part}" if args.as_module else file_part)
    app, target = pick_target(module, name or None)
    raw = target.raw_f if isinstance(target, LocalEntrypoint) else target._raw_f
    kwargs = _parse_entrypoint_args(raw, args.args)
    with enable_output(), app.run(detach=args.detach):
        for tag, function in sorted(app.registered_functions.items()):
            if function.get_web_url():
                auth = " (needs proxy auth)" if function._extra_spec.get("web", {}).get("requires_proxy_auth") else ""
                print(f"=> {tag}: {function.get_web_url()}{auth}", file=sys.stderr, flush=True)
        if args.detach:
            print(
                f"detached: {app.app_id} goes on after this run; `minimodal app logs {app.app_id} --follow`, "
                f"`minimodal app stop {app.app_id}`",
                file=sys.stderr,
                flush=True,
            )
        if isinstance(target, LocalEntrypoint):
            result = target(**kwargs)
            if inspect.iscoroutine(result):
                import asyncio

                asyncio.run(result)
        else:
            result = target.remote(**kwargs)
            if result is not None:
                print(result)
    return 0


def _serve_cmd(args: argparse.Namespace) -> int:
    from ._serve import cmd_serve

    return cmd_serve(args)


def _server(*argv: str) -> int:
    """Run a control-plane command in a separate interpreter: the SDK never imports the server."""
    child = subprocess.Popen([sys.executable, "-m", "mm_app", *argv])
    # SIGTERM to this process reaches the server command too (a foreground `up` then stops the stack).
    previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the child as well: let it finish its `down`
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_up(args: argparse.Namespace) -> int:
    return _server("up", *(["--detach"] if args.detach else []))


def cmd_down(args: argparse.Namespace) -> int:
    return _server("down")


def cmd_worker_join(args: argparse.Namespace) -> int:
    flags = [
        f"--{name}={value}"
        for name in ("server", "token", "redis", "database", "registry", "concurrency")
        if (value := getattr(args, name)) is not None
    ]
    return _server("join", *flags)


def cmd_status(args: argparse.Namespace) -> int:
    if (config.home() / "run" / "supervisor.sock").exists():  # a stack `minimodal up` runs here: list it
        code = _server("status")
        if code != 0:
            return code
    url = config.get("server_url")
    try:
        health = Client(url, None).request("GET", "/health", timeout=5)
    except Error as exc:
        print(f"down: {exc}")
        return 1
    print(f"up: {url} ({health.get('status')})")
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    client = Client.from_config()
    if args.user_command == "create":
        body = {"name": args.name, "quota": args.quota, "weight": args.weight}
        reply = client.request("POST", "/v1/users", json={k: v for k, v in body.items() if v is not None})
        print(reply["token"])
    else:
        body = {"quota": args.quota, "weight": args.weight}
        reply = client.request("PATCH", f"/v1/users/{args.name}", json={k: v for k, v in body.items() if v is not None})
        print(f"{reply['name']}: quota={reply['quota']} weight={reply['weight']}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    body = {"user": args.user} if args.user else {}
    reply = Client.from_config().request("POST", "/v1/tokens/revoke", json=body)
    print(f"revoked the token of {reply['user']}")
    return 0


def _print_logs(path: str, follow: bool) -> int:
    client = Client.from_config()
    cursor = "0-0"
    while True:
        reply = client.request("GET", path, params={"cursor": cursor, "follow": int(follow)}, timeout=60)
        for event in reply["logs"]:
            print_log(event)
        cursor = reply["cursor"]
        if not follow:
            return 0


def cmd_logs(args: argparse.Namespace) -> int:
    return _print_logs(f"/v1/calls/{args.call_id}/logs", False)


def cmd_app(args: argparse.Namespace) -> int:
    if getattr(args, "app_handler", None) is not None:
        return int(args.app_handler(args))  # stop, history: sdk/minimodal/_deploy_cli.py
    if args.app_command == "list":
        apps = Client.from_config().request("GET", "/v1/apps")["apps"]
        if args.json:
            print_json(apps)
            return 0
        print(f"{'app id':24} {'name':20} {'state':10} {'created':20} functions")
        for app in apps:
            print(
                f"{app['app_id']:24} {app['name'] or '-':20} {app['state']:10} {app['created_at'][:19]:20} "
                f"{', '.join(app['functions'])}"
            )
        return 0
    try:
        return _print_logs(f"/v1/apps/{args.app}/logs", args.follow)
    except KeyboardInterrupt:
        return 0


def cmd_call(args: argparse.Namespace) -> int:
    client = Client.from_config()
    call = client.request("GET", f"/v1/calls/{args.call_id}")
    attempts = client.request("GET", f"/v1/calls/{args.call_id}/attempts")["attempts"]
    statuses = ", ".join(f"{status} {n}" for status, n in sorted(call["statuses"].items()))
    print(f"{call['call_id']}  {call['function']}  {call['num_inputs']} input(s): {statuses}")
    print(f"created {call['created_at']}")
    for item in call["inputs"]:
        took = f"{item['duration'] * 1000:.1f} ms" if item["duration"] is not None else "-"
        print(
            f"  [{item['index']}] {item['status']:12} attempts={item['attempts']} run={took} "
            f"worker={item['worker'] or '-'} started={item['started_at'] or '-'} ended={item['finished_at'] or '-'}"
        )
        if item["error"]:
            print(f"      error: {item['error'].splitlines()[0][:200]}")
    for attempt in attempts:
        line = f"  attempt {attempt['attempt']} of [{attempt['index']}]: {attempt['status']} on {attempt['worker']}"
        print(line + (f": {attempt['error'][:120]}" if attempt["error"] else ""))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    client = Client.from_config()
    if args.dlq_command == "retry":
        reply = client.request("POST", f"/dead-letter-queue/{args.id}/retry")
        print(f"dead letter {reply['id']} queued again: {reply['call_id']}[{reply['index']}]")
        return 0
    reply = client.request("GET", "/dead-letter-queue", params={"page": args.page, "state": args.state})
    for item in reply["items"]:
        error = (item["error"] or "").splitlines()[0][:80] if item["error"] else ""
        print(
            f"{item['id']:>6}  {item['state']:8} {item['call_id']}[{item['index']}]  {item['function']}  "
            f"attempts={item['attempts']}  {error}"
        )
    print(f"{reply['total']} dead letter(s); page {reply['page']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimodal", description="MiniModal: serverless Python on your machines")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a local entrypoint or function of an app file")
    run.add_argument("ref", help="FILE.py or FILE.py::NAME, or with -m: MODULE[::NAME]")
    run.add_argument("-m", dest="as_module", action="store_true", help="REF names a module (pkg.mod), as python -m")
    run.add_argument("args", nargs=argparse.REMAINDER, help="options for the entrypoint")
    run.add_argument("--detach", "-d", action="store_true", help="the app outlives the entrypoint (`app stop` ends it)")
    run.set_defaults(handler=cmd_run)

    serve = commands.add_parser("serve", help="serve an app's web endpoints, reloading when its source changes")
    serve.add_argument("ref", help="FILE.py or FILE.py::APP")
    serve.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    serve.set_defaults(handler=_serve_cmd)

    up = commands.add_parser("up", help="start a local stack (Redis, API, dispatcher, worker, beat, Flower)")
    up.add_argument("--detach", "-d", action="store_true", help="return once the stack answers")
    up.set_defaults(handler=cmd_up)
    commands.add_parser("down", help="stop what `minimodal up` started").set_defaults(handler=cmd_down)
    commands.add_parser(
        "status", help="the local stack's processes, and whether the API answers (else exit 1)"
    ).set_defaults(handler=cmd_status)

    worker = commands.add_parser("worker", help="workers of a cluster")
    worker_commands = worker.add_subparsers(dest="worker_command", required=True)
    join = worker_commands.add_parser("join", help="start a worker on this machine for the cluster of --server")
    join.add_argument("--server", required=True, help="the API's URL")
    join.add_argument("--token", required=True, help="the workers' credential (MINIMODAL_WORKER_TOKEN)")
    join.add_argument("--redis", help="Redis URL as this machine reaches it (default: what the API advertises)")
    join.add_argument("--database", help="database URL as this machine reaches it (default: the API's)")
    join.add_argument("--registry", help="image registry host:port (default: the API's MINIMODAL_REGISTRY)")
    join.add_argument("--concurrency", "-c", type=int, help="calls at once")
    join.set_defaults(handler=cmd_worker_join)

    logs = commands.add_parser("logs", help="what a call printed")
    logs.add_argument("call_id")
    logs.set_defaults(handler=cmd_logs)

    app = commands.add_parser("app", help="apps")
    app_commands = app.add_subparsers(dest="app_command", required=True)
    app_commands.add_parser("list", help="your apps, newest first").add_argument("--json", action="store_true")
    app_logs = app_commands.add_parser("logs", help="what an app's calls printed")
    app_logs.add_argument("app", help="app id (ap-...) or name (its newest run)")
    app_logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    app.set_defaults(handler=cmd_app)
    _deploy_cli.add_commands(commands, app_commands)

    call = commands.add_parser("call", help="function calls")
    call_commands = call.add_subparsers(dest="call_command", required=True)
    show = call_commands.add_parser("show", help="status, attempts, timings, worker and error of a call")
    show.add_argument("call_id")
    call.set_defaults(handler=cmd_call)

    dlq = commands.add_parser("dlq", help="the dead-letter queue: inputs whose retries ran out")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser("list")
    dlq_list.add_argument("--page", type=int, default=1)
    dlq_list.add_argument("--state", choices=["open", "retried", "all"], default="open")
    dlq_retry = dlq_commands.add_parser("retry")
    dlq_retry.add_argument("id", type=int)
    dlq.set_defaults(handler=cmd_dlq)

    user = commands.add_parser("user", help="manage users (admin token)")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    for verb in ("create", "set"):
        sub = user_commands.add_parser(verb)
        sub.add_argument("name")
        sub.add_argument("--quota", type=int, help="calls in flight at once")
        sub.add_argument("--weight", type=int, help="share when several users wait")
    user.set_defaults(handler=cmd_user)

    token = commands.add_parser("token", help="tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    revoke = token_commands.add_parser("revoke", help="revoke your token (or, as admin, a user's): refused at once")
    revoke.add_argument("--user", help="whose token (admin token needed for another user's)")
    token.set_defaults(handler=cmd_token)
    _cli_objects.add_commands(commands)  # secret, volume
    _cli_sandbox.add_commands(commands)  # sandbox
    _cli_state.add_commands(commands)  # dict, queue
    _cli_containers.add_commands(commands)  # container, shell
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except Error as exc:
        print(f"minimodal: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:  # the app (unless detached) was stopped on the way out, its calls cancelled
        print("minimodal: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def _one_line(message: str) -> str:
    """An error for the terminal: its first line (a remote traceback stays in `minimodal call show`)."""
    return message.strip().splitlines()[0] if message.strip() else message
