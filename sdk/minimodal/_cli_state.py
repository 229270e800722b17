"""``minimodal dict ...`` and ``minimodal queue ...``: look into (and empty) a user's Dicts and Queues.

Keys and values are the user's own cloudpickles, unpickled here on the user's machine; one that
cannot be unpickled (its class is not importable here) is shown as ``<cannot unpickle: ...>``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .dict import Dict
from .exception import NotFoundError
from .queue import Queue


def _value(data: str) -> Any:
    from ._objects import loads

    try:
        return loads(data, "value")
    except Exception as exc:  # noqa: BLE001 - shown, not raised: the other entries are still worth seeing
        return _Opaque(str(exc))


class _Opaque:
    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<cannot unpickle: {self.why[:80]}>"


def _jsonable(value: Any) -> Any:
    """The value itself when JSON can carry it, else its repr."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_table(rows: list[list[str]], header: list[str]) -> None:
    """Columns as wide as their widest cell; nothing but the header when there are no rows."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_dict(args: argparse.Namespace) -> int:
    verb = args.dict_command
    if verb == "list":
        objects = [{**o, "len": Dict(object_id=o["id"]).len()} for o in Dict._names()]
        if args.json:
            print_json(objects)
        else:
            print_table([[o["name"], o["id"], str(o["len"])] for o in objects], ["name", "id", "items"])
        return 0
    d = Dict.from_name(args.name)
    if verb == "items":
        items = [(_value(k), _value(v)) for k, v in d._request("items")["items"]][: args.n]
        if args.json:
            print_json([[_jsonable(k), _jsonable(v)] for k, v in items])
        else:
            print_table([[repr(k), repr(v)] for k, v in items], ["key", "value"])
    elif verb == "get":
        found = d.get(args.key, _MISSING)
        if found is _MISSING:
            raise NotFoundError(f"dict {args.name!r} has no key {args.key!r}")
        print(json.dumps(_jsonable(found)) if args.json else repr(found))
    elif verb == "clear":
        d.clear()
        print(f"dict {args.name} cleared")
    elif verb == "delete":
        Dict.delete(args.name)
        print(f"dict {args.name} deleted")
    return 0


_MISSING: Any = object()


def cmd_queue(args: argparse.Namespace) -> int:
    verb = args.queue_command
    if verb == "list":
        objects = [{**o, "len": Queue(object_id=o["id"]).len(total=True)} for o in Queue._names()]
        if args.json:
            print_json(objects)
        else:
            print_table([[o["name"], o["id"], str(o["len"])] for o in objects], ["name", "id", "values"])
        return 0
    q = Queue.from_name(args.name)
    partition = getattr(args, "partition", None)
    if verb == "len":
        print(q.len(partition=partition, total=args.total))
    elif verb == "peek":
        values = [_value(v) for v in q._request("peek", start=0, n=args.n, partition=partition)["values"]]
        if args.json:
            print_json([_jsonable(v) for v in values])
        else:
            for value in values:
                print(repr(value))
    elif verb == "clear":
        q.clear(partition=partition, all=args.all)
        print(f"queue {args.name} cleared")
    elif verb == "delete":
        Queue.delete(args.name)
        print(f"queue {args.name} deleted")
    return 0


def add_commands(commands: Any) -> None:
    """Add the ``dict`` and ``queue`` command groups to the CLI's subparsers."""
    d = commands.add_parser("dict", help="your Dicts: list, look into, empty, delete")
    dv = d.add_subparsers(dest="dict_command", required=True)
    dv.add_parser("list", help="your named Dicts").add_argument("--json", action="store_true")
    items = dv.add_parser("items", help="a Dict's entries")
    items.add_argument("name")
    items.add_argument("-n", type=int, default=20, help="at most this many (default 20)")
    items.add_argument("--json", action="store_true")
    get = dv.add_parser("get", help="the value of one (string) key")
    get.add_argument("name")
    get.add_argument("key")
    get.add_argument("--json", action="store_true")
    dv.add_parser("clear", help="remove every entry").add_argument("name")
    dv.add_parser("delete", help="delete the Dict").add_argument("name")
    d.set_defaults(handler=cmd_dict)

    q = commands.add_parser("queue", help="your Queues: list, length, peek, empty, delete")
    qv = q.add_subparsers(dest="queue_command", required=True)
    qv.add_parser("list", help="your named Queues").add_argument("--json", action="store_true")
    length = qv.add_parser("len", help="how many values (one partition, or --total)")
    length.add_argument("name")
    length.add_argument("--partition")
    length.add_argument("--total", action="store_true", help="all partitions")
    peek = qv.add_parser("peek", help="the next values, without taking them")
    peek.add_argument("name")
    peek.add_argument("n", type=int, nargs="?", default=1)
    peek.add_argument("--partition")
    peek.add_argument("--json", action="store_true")
    clear = qv.add_parser("clear", help="remove the values (one partition, or --all)")
    clear.add_argument("name")
    clear.add_argument("--partition")
    clear.add_argument("--all", action="store_true")
    qv.add_parser("delete", help="delete the Queue").add_argument("name")
    q.set_defaults(handler=cmd_queue)
