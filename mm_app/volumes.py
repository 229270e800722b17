"""Volumes on the control plane: a content-addressed file store and each volume's manifest.

The store (``MINIMODAL_VOLUME_STORE``, by default ``MINIMODAL_HOME/volumes``) holds every file
version once, named by its SHA-256 (``blobs/ab/abcd...``). A volume is a manifest in Redis: path ->
``{"sha", "size", "mtime"}`` (see :func:`minimodal.keyspace.volume_files_key`). A commit changes
only the paths it touched, one hash field each: commits to different files both survive, and of
two commits to the same file the later wins. Only the API process touches the store: workers copy
what a call mounts into their own cache (``mm_app/tasks/volumes.py``) and commit back through the
API's internal routes (``mm_app/api/internal.py``), so a worker on another host needs nothing but the
API's URL, Redis and the workers' credential. Files stream through in chunks: a 1 GiB file is never
held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from redis import Redis

from minimodal import config
from minimodal.exception import InvalidError, NotFoundError
from mm_app import keyspace

CHUNK = 1024 * 1024  # bytes read and written at a time


def store_root() -> Path:
    return Path(config.get("volume_store") or config.home() / "volumes").expanduser()


def normalize(path: str) -> str:
    """A volume path as stored: relative, POSIX, no ``..``; ``""`` is the root."""
    if not isinstance(path, str):
        raise InvalidError(f"volume path {path!r}: give a string")
    if ".." in path.replace("\\", "/").split("/"):
        raise InvalidError(f"volume path {path!r} leaves the volume")
    clean = posixpath.normpath("/" + path.replace("\\", "/")).lstrip("/")
    return "" if clean == "." else clean


_FORBIDDEN_MOUNTS = ("/", "/opt/mm", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/lib", "/tmp")


def check_mount_path(path: Any) -> str:
    if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") in _FORBIDDEN_MOUNTS or ".." in path:
        raise InvalidError(f"volumes={{{path!r}: ...}}: give an absolute path such as /data, not a system directory")
    return path.rstrip("/")


class BlobStore:
    """Content-addressed files under ``root/blobs``; writes are atomic (a temp file, then a rename)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or store_root()

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            raise InvalidError(f"not a SHA-256: {sha!r}")
        return self.root / "blobs" / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def put_stream(self, stream: IO[bytes], expect: str | None = None) -> tuple[str, int]:
        """Copy ``stream`` into the store chunk by chunk; return its SHA-256 and size.

        With ``expect``, content that does not hash to it is refused (InvalidError) and not stored.
        """
        if expect is not None:
            self.path(expect)  # a malformed name is refused before the body is read
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
            if expect is not None and sha != expect:
                raise InvalidError(f"the body hashes to {sha}, not to the {expect} it was sent as")
            target = self.path(sha)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)  # the same content twice: the same bytes, either rename wins
        except BaseException:
            with_missing_ok(tmp)
            raise
        return sha, size

    def read(self, sha: str) -> Iterator[bytes]:
        with open(self.path(sha), "rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk


def with_missing_ok(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---- manifests ----------------------------------------------------------------------------------


def manifest(redis: Redis, volume_id: str) -> dict[str, dict[str, Any]]:
    """Path -> ``{"sha", "size", "mtime"}`` of every file of the volume."""
    raw = redis.hgetall(keyspace.volume_files_key(volume_id))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def entry(sha: str, size: int, mtime: float | None = None) -> dict[str, Any]:
    return {"sha": sha, "size": size, "mtime": round(mtime if mtime is not None else time.time(), 3)}


def apply(redis: Redis, volume_id: str, put: dict[str, dict[str, Any]], removed: list[str]) -> None:
    """One commit: set the files it wrote, drop the ones it removed, leave every other path alone."""
    key = keyspace.volume_files_key(volume_id)
    with redis.pipeline(transaction=True) as pipe:
        if put:
            pipe.hset(key, mapping={path: json.dumps(meta) for path, meta in put.items()})
        if removed:
            pipe.hdel(key, *removed)
        pipe.execute()


def listdir(files: dict[str, dict[str, Any]], path: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries under ``path`` (files and the directories their paths imply), as Modal's FileEntry."""
    base = normalize(path)
    if base in files:
        meta = files[base]
        return [{"path": base, "type": "file", "size": meta["size"], "mtime": meta["mtime"]}]
    prefix = base + "/" if base else ""
    out: dict[str, dict[str, Any]] = {}
    for name, meta in files.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :].split("/")
        for depth in range(1, len(rest)):  # the directories on the way
            if recursive or depth == 1:
                directory = prefix + "/".join(rest[:depth])
                out.setdefault(directory, {"path": directory, "type": "directory", "size": 0, "mtime": meta["mtime"]})
        if recursive or len(rest) == 1:
            out[name] = {"path": name, "type": "file", "size": meta["size"], "mtime": meta["mtime"]}
    if not out and base:
        raise NotFoundError(f"no such file or directory in the volume: {path}")
    return sorted(out.values(), key=lambda e: e["path"])


def remove(redis: Redis, volume_id: str, path: str, recursive: bool) -> list[str]:
    """Remove a file, or a directory with ``recursive``; return the removed paths."""
    base = normalize(path)
    files = manifest(redis, volume_id)
    if base in files:
        doomed = [base]
    else:
        doomed = [p for p in files if base == "" or p.startswith(base + "/")]
        if not doomed:
            raise NotFoundError(f"no such file or directory in the volume: {path}")
        if not recursive:
            raise InvalidError(f"{path} is a directory: pass recursive=True to remove it")
    apply(redis, volume_id, {}, doomed)
    return doomed


def delete_volume(redis: Redis, volume_id: str) -> None:
    """Drop the manifest; the blobs stay (another volume may hold the same content; no GC yet)."""
    redis.delete(keyspace.volume_files_key(volume_id))
