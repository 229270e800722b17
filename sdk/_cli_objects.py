"""``minimodal secret ...`` and ``minimodal volume ...``: the CLI of the objects a user keeps."""

from __future__ import annotations

import argparse
from typing import Any

from .exception import InvalidError
from .secret import Secret


def _pairs(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidError(f"{item!r}: give KEY=VALUE")
        values[name] = value
    return values


def cmd_secret(args: argparse.Namespace) -> int:
    if args.secret_command == "create":
        if not args.values:
            raise InvalidError("give at least one KEY=VALUE")
        info = Secret.create(args.name, _pairs(args.values), overwrite=args.force)
        print(f"secret {info['name']} stored with {', '.join(info['keys'])}")  # names only, never values
    elif args.secret_command == "list":
        for info in Secret.list_secrets():
            print(f"{info['name']:32} {info['updated_at'][:19]}  {', '.join(info['keys'])}")
    else:
        Secret.delete(args.name)
        print(f"secret {args.name} deleted")
    return 0


def add_commands(commands: Any) -> None:
    """Add the ``secret`` and ``volume`` command groups to the CLI's subparsers."""
    secret = commands.add_parser("secret", help="secrets: environment variables for functions, stored encrypted")
    secret_commands = secret.add_subparsers(dest="secret_command", required=True)
    create = secret_commands.add_parser("create", help="store NAME with KEY=VALUE ...")
    create.add_argument("name")
    create.add_argument("values", nargs="*", metavar="KEY=VALUE")
    create.add_argument("--force", action="store_true", help="replace the values of an existing secret")
    secret_commands.add_parser("list", help="your secrets (names and keys, never values)")
    delete = secret_commands.add_parser("delete", help="delete a secret")
    delete.add_argument("name")
    secret.set_defaults(handler=cmd_secret)
