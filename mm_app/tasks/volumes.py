"""A worker's cache of the volumes its calls mount: synced from the store, committed back to it.

The store is reached through the API only (:class:`~mm_app.tasks.blobs.RemoteBlobStore`, over HTTP);
the manifests through Redis, as every worker already does. So a worker on any host sees what others
committed, with nothing of the control plane's disk mounted.

Each volume has a directory ``MINIMODAL_HOME/volcache/<id>/data`` that containers of this worker
bind-mount at the function's path, and a ``state.json`` baseline (path -> sha, size, mtime_ns) of
what was last synced or committed. :meth:`VolumeCache.sync` (before each input, and ``vol.reload()``)
brings in what others committed: files whose committed hash moved since the baseline, and removals.
:meth:`VolumeCache.commit` (after each input, and ``vol.commit()``) hashes the files that changed
since the baseline, uploads new content to the store and only then changes those paths in the manifest.
Local files nobody committed yet are left alone by a sync.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from redis import Redis

from minimodal import config
from minimodal.exception import ServiceError

from .. import volumes
from ..volumes import CHUNK
from .blobs import ContentChanged, RemoteBlobStore

CONTAINER_UID = 1000  # the runner user of the base image: it must be able to write the mounted files
COMMIT_TRIES = 3  # a file rewritten while it is uploaded is hashed and sent again this many times


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class VolumeCache:
    def __init__(self, root: Path, store: RemoteBlobStore, redis: Redis) -> None:
        self.root, self.store, self.redis = root, store, redis
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    def data_dir(self, volume_id: str) -> Path:
        return self.root / volume_id / "data"

    def _state_path(self, volume_id: str) -> Path:
        return self.root / volume_id / "state.json"

    def _load(self, volume_id: str) -> dict[str, list[Any]]:
        try:
            return json.loads(self._state_path(volume_id).read_text())
        except FileNotFoundError:
            return {}

    def _save(self, volume_id: str, state: dict[str, list[Any]]) -> None:
        path = self._state_path(volume_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def _own(self, path: Path) -> None:
        """Let the container's user write it (the worker may run as root, the runner does not)."""
        if os.geteuid() == 0:
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
        else:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)

    def _ensure_dir(self, directory: Path, top: Path) -> None:
        missing = []
        while not directory.exists() and directory != top:
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            self._own(path)

    def prepare(self, volume_id: str) -> Path:
        data = self.data_dir(volume_id)
        if not data.exists():
            data.mkdir(parents=True, exist_ok=True)
            self._own(data)
        return data

    def sync(self, volume_id: str) -> int:
        """Bring in the committed state; return how many files changed here."""
        with self._locks[volume_id]:
            data = self.prepare(volume_id)
            files = volumes.manifest(self.redis, volume_id)
            state = self._load(volume_id)
            changed = 0
            for path in [p for p in state if p not in files]:  # removed by another commit
                volumes.with_missing_ok(data / path)
                del state[path]
                changed += 1
            for path, meta in files.items():
                known = state.get(path)
                local = data / path
                if known and known[0] == meta["sha"] and local.exists():
                    continue
                self._ensure_dir(local.parent, data)
                fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=".mm-sync-")
                os.close(fd)
                try:
                    self.store.download(meta["sha"], Path(tmp))
                    os.utime(tmp, (meta["mtime"], meta["mtime"]))
                    self._own(Path(tmp))
                    os.replace(tmp, local)
                except BaseException:
                    volumes.with_missing_ok(tmp)
                    raise
                stat = local.stat()
                state[path] = [meta["sha"], stat.st_size, stat.st_mtime_ns]
                changed += 1
            self._save(volume_id, state)
            return changed

    def commit(self, volume_id: str) -> int:
        """Publish what changed here since the last sync or commit; return how many paths it changed."""
        with self._locks[volume_id]:
            data = self.prepare(volume_id)
            state = self._load(volume_id)
            put: dict[str, dict[str, Any]] = {}
            present = set()
            for directory, _, names in os.walk(data):
                for name in names:
                    local = Path(directory) / name
                    if name.startswith(".mm-sync-") or local.is_symlink() or not local.is_file():
                        continue
                    path = local.relative_to(data).as_posix()
                    present.add(path)
                    stat = local.stat()
                    known = state.get(path)
                    if known and known[1] == stat.st_size and known[2] == stat.st_mtime_ns:
                        continue
                    sha, stat, uploaded = self._upload(local, known[0] if known else None)
                    state[path] = [sha, stat.st_size, stat.st_mtime_ns]
                    if uploaded:
                        put[path] = volumes.entry(sha, stat.st_size, stat.st_mtime)
            removed = [p for p in state if p not in present]
            for path in removed:
                del state[path]
            if put or removed:
                volumes.apply(self.redis, volume_id, put, removed)
            self._save(volume_id, state)
            return len(put) + len(removed)

    def _upload(self, local: Path, known_sha: str | None) -> tuple[str, os.stat_result, bool]:
        """Hash ``local`` and send its content to the store unless it is ``known_sha`` (touched, not changed)."""
        for _ in range(COMMIT_TRIES):
            stat = local.stat()
            sha = _hash(local)
            if sha == known_sha:
                return sha, stat, False
            try:
                self.store.upload(local, sha)
            except ContentChanged:
                continue  # written again while it was sent: hash what is there now
            return sha, stat, True
        raise ServiceError(f"{local} kept changing while it was committed; commit again when it is written")


_cache: VolumeCache | None = None
_cache_lock = threading.Lock()


def cache(redis: Redis) -> VolumeCache:
    """This worker process's cache (under its own MINIMODAL_HOME), over the API's store."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = VolumeCache(config.home() / "volcache", RemoteBlobStore(), redis)
        return _cache


def mounts(redis: Redis, options: dict[str, Any]) -> dict[str, str]:
    """Container path -> this worker's cache directory, for a function's ``volumes`` option."""
    wanted = options.get("volumes") or {}
    return {path: str(cache(redis).prepare(volume_id)) for path, volume_id in wanted.items()}
