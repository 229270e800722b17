"""The CLI's deploy commands: ``minimodal deploy FILE``, ``minimodal app stop|history NAME``."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from ._client import Client
from ._deploy import deploy_app
from ._target import import_file
from .app import App
from .exception import InvalidError


def cmd_deploy(args: argparse.Namespace) -> int:
    file_part, _, variable = args.file.partition("::")
    module = import_file(file_part)
    apps = {k: v for k, v in vars(module).items() if isinstance(v, App)}
    if variable or len(apps) != 1:
        variable = variable or "app"  # as Modal: the variable named `app` unless FILE::NAME says otherwise
        if variable not in apps:
            raise InvalidError(f"{file_part} has no minimodal.App named {variable!r} (it has: {sorted(apps)})")
    app = deploy_app(apps[variable] if variable else next(iter(apps.values())), args.name)
    print(f"deployed {app.name} version {app.deployed_version} ({app.app_id})")
    for tag, function in sorted(app.registered_functions.items()):
        url = function.get_web_url()
        print(f"  {tag}" + (f"  {url}" if url else ""))
    return 0


def cmd_app_stop(args: argparse.Namespace) -> int:
    client = Client.from_config()
    if args.app.startswith("ap-"):
        reply = client.request("POST", f"/v1/apps/{args.app}/stop")
        print(f"stopped {reply['app_id']}")
    else:
        reply = client.request("POST", f"/v1/deployments/{quote(args.app, safe='')}/stop")
        print(f"stopped {reply['name']} version {reply['version']} ({reply['app_id']})")
    return 0


def cmd_app_history(args: argparse.Namespace) -> int:
    reply = Client.from_config().request("GET", f"/v1/deployments/{quote(args.app, safe='')}/history")
    if args.json:
        from ._cli_state import print_json

        print_json(reply)
        return 0
    print(f"{'version':>7}  {'app id':24} {'state':9} deployed")
    for v in reply["versions"]:
        print(f"{v['version']:>7}  {v['app_id']:24} {v['state']:9} {v['deployed_at'][:19]}")
    print(f"\nnewest calls ({len(reply['calls'])}):")
    for c in reply["calls"]:
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(c["statuses"].items()))
        print(f"  {c['call_id']}  v{c['version']}  {c['function']:20} {c['created_at'][:19]}  {statuses}")
    return 0


def add_commands(commands: argparse._SubParsersAction, app_commands: argparse._SubParsersAction) -> None:
    deploy = commands.add_parser("deploy", help="deploy an app file: a new persistent version of the app")
    deploy.add_argument("file", help="FILE.py or FILE.py::APP (default: its only App, or the one named `app`)")
    deploy.add_argument("--name", help="deploy under this name instead of the App's")
    deploy.set_defaults(handler=cmd_deploy)
    stop = app_commands.add_parser("stop", help="stop a deployed app (by name) or any app (by ap- id)")
    stop.add_argument("app")
    stop.set_defaults(app_handler=cmd_app_stop)
    history = app_commands.add_parser("history", help="a deployed app's versions and newest calls")
    history.add_argument("app")
    history.add_argument("--json", action="store_true")
    history.set_defaults(app_handler=cmd_app_history)
