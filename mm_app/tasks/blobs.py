"""The volume store as a worker reaches it: over HTTP, through the API's internal routes.

Workers never open the store's path (``MINIMODAL_VOLUME_STORE`` is the API's setting): a worker on
another host needs only the API's URL (``MINIMODAL_SERVER_URL``) and the workers' credential
(``MINIMODAL_WORKER_TOKEN``, see ``mm_app/credential.py``). Files move in 1 MiB chunks both ways and
are checked against their SHA-256 on arrival, so neither side ever holds one whole in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from minimodal import config
from minimodal._backoff import Backoff, Retrying
from minimodal._client import Client
from minimodal.exception import AuthError, InvalidError, NotFoundError, ServiceError

from .. import credential
from ..volumes import CHUNK

RETRY_SECONDS = 60  # how long an upload keeps trying to reach an API that does not answer (a restart)


class ContentChanged(Exception):
    """Raised when a file no longer hashes to the SHA-256 it is being uploaded as (written meanwhile)."""


class RemoteBlobStore:
    def __init__(self, server_url: str | None = None, token: str | None = None) -> None:
        self.client = Client(server_url or config.get("server_url"), token or credential.worker_token())

    def _path(self, sha: str) -> str:
        return f"/internal/volume-blobs/{sha}"

    def _refused(self, exc: AuthError) -> ServiceError:
        return ServiceError(
            f"the API at {self.client.server_url} refused this worker's credential ({exc}); set the same "
            "MINIMODAL_WORKER_TOKEN on the API and every worker"
        )

    def has(self, sha: str) -> bool:
        try:
            self.client.request("HEAD", self._path(sha), raw=True, reconnect=True)
        except NotFoundError:
            return False
        except AuthError as exc:
            raise self._refused(exc) from None
        return True

    def download(self, sha: str, target: Path) -> int:
        """Write the content ``sha`` into ``target`` (an existing file, truncated); return its size."""
        try:
            reply = self.client.request("GET", self._path(sha), stream=True, reconnect=True)
        except AuthError as exc:
            raise self._refused(exc) from None
        except NotFoundError as exc:
            raise ServiceError(f"the volume store lost the content {sha}: {exc}") from None
        digest, size = hashlib.sha256(), 0
        with reply, open(target, "wb") as out:
            for chunk in reply.iter_content(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if digest.hexdigest() != sha:
            raise ServiceError(f"the download of {sha} from {self.client.server_url} was cut short or corrupted")
        return size

    def upload(self, source: Path, sha: str) -> None:
        """Send a local file unless the store has its content; ContentChanged if it no longer hashes to ``sha``."""
        if self.has(sha):
            return
        backoff = Backoff(0.2, factor=2.0, most=2.0, seconds=RETRY_SECONDS)

        def wait_after(exc: Exception) -> float | None:  # an API that cannot be reached (a restart) is waited for
            return backoff.next_wait() if isinstance(exc, ServiceError) and exc.__cause__ is not None else None

        for attempt in Retrying(wait_after):
            with attempt:
                try:
                    with open(source, "rb") as body:  # opened again on each try: a failed try moved its position
                        self.client.request("PUT", self._path(sha), data=body, timeout=300)
                    return
                except InvalidError as exc:
                    raise ContentChanged(str(exc)) from None
                except AuthError as exc:
                    raise self._refused(exc) from None
