"""``minimodal secret ...`` and ``minimodal volume ...``: the CLI of the objects a user keeps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .exception import InvalidError
from .runtime import enable_output
from .secret import Secret
from .volume import Volume


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


def cmd_volume(args: argparse.Namespace) -> int:
    verb = args.volume_command
    if verb == "list":
        for item in Volume.list_volumes():
            print(f"{item['name']:32} {item['id']}")
        return 0
    if verb == "delete":
        Volume.delete(args.name)
        print(f"volume {args.name} deleted")
        return 0
    vol = Volume.from_name(args.name, create_if_missing=verb == "create")
    if verb == "create":
        print(f"volume {args.name} is {vol.object_id}")
    elif verb == "ls":
        for entry in vol.listdir(args.path, recursive=args.recursive):
            kind = "d" if entry.type == "directory" else "-"
            print(f"{kind} {entry.size:>12}  {entry.path}")
    elif verb == "put":
        local = Path(args.local)
        remote = args.remote or "/" + local.name
        if remote.endswith("/"):
            remote += local.name
        with enable_output(), vol.batch_upload(force=args.force) as batch:
            batch._progress = True
            if local.is_dir():
                batch.put_directory(local, remote)
            else:
                batch.put_file(local, remote)
        print(f"uploaded {args.local} to {args.name}:{remote}")
    elif verb == "get":
        if args.local == "-":
            for chunk in vol.read_file(args.remote):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        else:
            target = Path(args.local or Path(args.remote).name)
            if target.is_dir():
                target = target / Path(args.remote).name
            with enable_output(), open(target, "wb") as out:
                size = vol.read_file_into_fileobj(args.remote, out, progress=True)
            print(f"downloaded {args.name}:{args.remote} to {target} ({size} bytes)")
    elif verb == "rm":
        vol.remove_file(args.path, recursive=args.recursive)
        print(f"removed {args.path}")
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

    volume = commands.add_parser("volume", help="volumes: files that outlive calls")
    volume_commands = volume.add_subparsers(dest="volume_command", required=True)
    volume_commands.add_parser("create", help="create a volume").add_argument("name")
    volume_commands.add_parser("list", help="your volumes")
    ls = volume_commands.add_parser("ls", help="list files of a volume")
    ls.add_argument("name")
    ls.add_argument("path", nargs="?", default="/")
    ls.add_argument("--recursive", "-r", action="store_true")
    put = volume_commands.add_parser("put", help="upload a file or directory (streamed, with a progress bar)")
    put.add_argument("name")
    put.add_argument("local")
    put.add_argument("remote", nargs="?", help="remote path (default: /<local name>)")
    put.add_argument("--force", "-f", action="store_true", help="overwrite existing files")
    get = volume_commands.add_parser("get", help="download a file (streamed; LOCAL '-' is stdout)")
    get.add_argument("name")
    get.add_argument("remote")
    get.add_argument("local", nargs="?")
    rm = volume_commands.add_parser("rm", help="remove a file, or a directory with -r")
    rm.add_argument("name")
    rm.add_argument("path")
    rm.add_argument("--recursive", "-r", action="store_true")
    volume_commands.add_parser("delete", help="delete a volume").add_argument("name")
    volume.set_defaults(handler=cmd_volume)
