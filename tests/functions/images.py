"""Functions the container tests run; their images are built per test from the specs below."""

from __future__ import annotations

import os
import time

import minimodal

app = minimodal.App("tests-images")


def whoami() -> tuple[bool, int, str]:
    return os.path.exists("/.dockerenv"), os.getuid(), os.environ.get("MINIMODAL_IS_REMOTE", "")


def six_version() -> str:
    import six

    return six.__version__


def modal_name() -> str:
    import modal  # a Modal program's import, in a container

    return modal.__name__


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def allocate(mib: int) -> int:
    blocks = [bytearray(1024 * 1024) for _ in range(mib)]
    return len(blocks)


def sleep(seconds: float) -> tuple[float, float]:
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


def version() -> str:
    return "one"


def version_two() -> str:
    return "two"


def inspect_image() -> dict[str, object]:
    import shutil

    import mmlocalpkg

    return {
        "cwd": os.getcwd(),
        "jq": shutil.which("jq") is not None,
        "dir": sorted(os.listdir("/opt/tree")),
        "package": mmlocalpkg.GREETING,
        "built_by_function": read("/opt/built-by-function.txt"),
        "env": os.environ.get("MM_COLOR"),
    }


def write_marker() -> None:
    with open("/opt/built-by-function.txt", "w") as f:
        f.write("ran at build time")
