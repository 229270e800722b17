"""``Volume``: a file system that outlives calls, mounted into functions with ``volumes={"/data": vol}``.

Example::

    vol = minimodal.Volume.from_name("models", create_if_missing=True)

    @app.function(volumes={"/data": vol})
    def train():
        open("/data/weights.bin", "wb").write(b"...")
        vol.commit()  # others see it now (also done when the input ends)

    with vol.batch_upload() as batch:  # from the client
        batch.put_file("local.txt", "/remote.txt")
    for chunk in vol.read_file("remote.txt"):
        ...

Inside a function the mount is a directory of the worker's cache: each input starts from the
committed contents, ``vol.reload()`` brings in what others committed since, and what the input wrote
is committed when it ends. Of two commits to the same file, the later wins; to different files, both
survive. Outside functions every change (upload, removal) is committed at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from ._aio import aio_iterator, aio_method
from ._objects import _Object
from ._progress import Bar
from .exception import InvalidError

CHUNK = 1024 * 1024  # bytes per read when streaming files


@dataclass(frozen=True)
class FileEntry:
    """One file or directory of a volume, as ``listdir`` gives it."""

    path: str
    type: str  # "file" | "directory"
    mtime: float
    size: int


class _ProgressReader:
    """A file object that advances a progress bar as requests reads it (so uploads stream)."""

    def __init__(self, source: IO[bytes], bar: Bar) -> None:
        self._source, self._bar = source, bar

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n if n and n > 0 else CHUNK)
        self._bar.advance(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            yield data


def _remote_path(path: str) -> str:
    return quote(path.lstrip("/"), safe="/")


class Volume(_Object):
    """A named or ephemeral volume of the MiniModal server."""

    _kind = "volume"

    @staticmethod
    def list_volumes() -> list[dict[str, str]]:
        """The user's named volumes: ``{"name", "id"}``."""
        return Volume._names()

    # ---- inside a function: through the runner; outside: nothing to do, changes are committed at once ----

    @aio_method
    def commit(self) -> None:
        """Publish this container's changes under the mount (inside a function)."""
        self._request("commit")

    @aio_method
    def reload(self) -> None:
        """Bring in what others committed (inside a function)."""
        self._request("reload")

    # ---- files, from the client ----

    def _client(self) -> Any:
        from ._client import Client

        return Client.from_config()

    def _url(self, what: str, path: str = "") -> str:
        return f"/v1/volumes/{self.object_id}/{what}" + (f"/{_remote_path(path)}" if path else "")

    @aio_method
    def listdir(self, path: str = "/", *, recursive: bool = False) -> list[FileEntry]:
        reply = self._client().request("GET", self._url("entries"), params={"path": path, "recursive": int(recursive)})
        return [FileEntry(**entry) for entry in reply["entries"]]

    @aio_iterator
    def read_file(self, path: str) -> Iterator[bytes]:
        """The file's bytes in chunks, as they arrive (a large file is never held in memory)."""
        response = self._client().request("GET", self._url("files", path), stream=True, timeout=600)
        try:
            yield from response.iter_content(CHUNK)
        finally:
            response.close()

    def read_file_into_fileobj(self, path: str, fileobj: IO[bytes], *, progress: bool = False) -> int:
        """Write the file into ``fileobj``; return its size."""
        response = self._client().request("GET", self._url("files", path), stream=True, timeout=600)
        bar = Bar(f"get {path}", total=int(response.headers.get("Content-Length", 0)) or None) if progress else None
        written = 0
        try:
            for chunk in response.iter_content(CHUNK):
                fileobj.write(chunk)
                written += len(chunk)
                if bar is not None:
                    bar.advance(len(chunk))
        finally:
            response.close()
            if bar is not None:
                bar.close()
        return written

    def _upload(self, source: IO[bytes], remote: str, size: int | None, force: bool, progress: bool) -> None:
        bar = Bar(f"put {remote}", total=size) if progress else Bar("")
        try:
            self._client().request(
                "PUT",
                self._url("files", remote),
                data=_ProgressReader(source, bar),
                params={"force": int(force)},
                timeout=3600,
            )
        finally:
            bar.close()

    @aio_method
    def remove_file(self, path: str, *, recursive: bool = False) -> None:
        self._client().request("DELETE", self._url("files", path), params={"recursive": int(recursive)})

    def batch_upload(self, *, force: bool = False) -> _BatchUpload:
        """``with vol.batch_upload() as batch: batch.put_file(...); batch.put_directory(...)``, sent on exit."""
        return _BatchUpload(self, force)


class _BatchUpload:
    """Files queued by ``put_file``/``put_directory``, streamed one by one when the block ends."""

    def __init__(self, volume: Volume, force: bool, progress: bool = False) -> None:
        self._volume, self._force, self._progress = volume, force, progress
        self._files: list[tuple[Any, str]] = []  # (local path or file object, remote path)

    def __enter__(self) -> _BatchUpload:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            return
        for source, remote in self._files:
            if isinstance(source, str | os.PathLike):
                with open(source, "rb") as handle:
                    self._volume._upload(handle, remote, os.path.getsize(source), self._force, self._progress)
            else:
                self._volume._upload(source, remote, None, self._force, self._progress)

    def put_file(self, local_file: str | os.PathLike[str] | IO[bytes], remote_path: str) -> None:
        if isinstance(local_file, str | os.PathLike) and not Path(local_file).is_file():
            raise InvalidError(f"put_file: no such file {local_file}")
        if not remote_path.strip("/"):
            raise InvalidError("put_file: give a remote file path")
        self._files.append((local_file, remote_path))

    def put_directory(self, local_path: str | os.PathLike[str], remote_path: str) -> None:
        root = Path(local_path)
        if not root.is_dir():
            raise InvalidError(f"put_directory: no such directory {local_path}")
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            self._files.append((str(file), f"{remote_path.rstrip('/')}/{file.relative_to(root).as_posix()}"))
