"""Every error MiniModal raises on purpose.

The tree::

    Error
    ├── InvalidError              bad arguments or options (HTTP 400)
    │   ├── PayloadTooLargeError  a payload over the configured maximum (HTTP 413)
    │   ├── UnsupportedOptionError an option accepted by the API but not implemented yet
    │   └── InsufficientResourcesError no worker can ever hold the call's cpu/memory/gpu (HTTP 400)
    ├── AuthError                 missing, wrong or revoked token (HTTP 401)
    │   └── PermissionDeniedError a valid token without the right, e.g. not an admin (HTTP 403)
    ├── RateLimitError            too many call submissions per token; retry after a while (HTTP 429)
    ├── NotFoundError             unknown function, call or user, or another user's (HTTP 404)
    │   └── ImageNotFoundError    a worker's Docker engine lacks the function's image and cannot pull it
    ├── ServiceError              the control plane or Redis cannot be reached or failed (HTTP 5xx)
    ├── RemoteError               the remote code failed in a way that cannot be re-raised as its own type
    ├── FunctionTimeoutError      a call ran longer than its ``timeout`` (also a builtin ``TimeoutError``)
    ├── OutputExpiredError        the call's output is gone (older than the result TTL)
    ├── SandboxTimeoutError       a sandbox ran past its ``timeout`` or ``idle_timeout``
    ├── SandboxTerminatedError    a sandbox was terminated (``terminate()``, ``app stop``, its worker lost)
    ├── SandboxFilesystemError    a file operation in a sandbox failed (a missing path, a directory...)
    ├── InputCancelledError       the input was cancelled (``FunctionCall.cancel()``, the app stopped)
    ├── ImageBuildError           an image failed to build (the message ends with the build log tail)
    └── SerializationError        a value could not be pickled or unpickled

``FunctionCall.get(timeout=...)`` raises the builtin :class:`TimeoutError` when the result is not
ready yet, as Modal does.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every MiniModal error."""


class InvalidError(Error):
    """Raised when arguments, options or a request body are not valid."""


class PayloadTooLargeError(InvalidError):
    """Raised when arguments or a result exceed the configured maximum payload size."""


class UnsupportedOptionError(InvalidError, NotImplementedError):
    """Raised when a decorator option is accepted for Modal compatibility but not implemented yet."""


class InsufficientResourcesError(InvalidError):
    """Raised at submit when no live worker could ever hold the function's cpu, memory, gpu or runtime."""


class AuthError(Error):
    """Raised when the token is missing, wrong or revoked."""


class PermissionDeniedError(AuthError):
    """Raised when a valid token lacks the right to do this (an admin-only route)."""


class RateLimitError(Error):
    """Raised when a token submits calls faster than its rate limit; ``retry_after`` says when to retry."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFoundError(Error):
    """Raised when a function, call, app or user does not exist or belongs to another user."""


class ImageNotFoundError(NotFoundError):
    """Raised when a worker's Docker engine lacks a function's image and no registry (MINIMODAL_REGISTRY) has it."""


class ServiceError(Error):
    """Raised when the MiniModal server, Redis or the database cannot be reached or fails."""


class RemoteError(Error):
    """Raised when remote code failed and its exception cannot be re-raised with its own type.

    The remote traceback text is in :attr:`traceback` and in the message.
    """

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message if not traceback else f"{message}\n\nRemote traceback:\n{traceback}")
        self.traceback = traceback


class FunctionTimeoutError(Error, TimeoutError):
    """Raised when a remote call runs longer than the function's ``timeout``."""


class OutputExpiredError(Error, TimeoutError):
    """Raised when a call's output was kept for less time than it took to ask for it."""


class SandboxTimeoutError(Error, TimeoutError):
    """Raised when a sandbox ran past its ``timeout`` or its ``idle_timeout`` and was ended."""


class SandboxTerminatedError(Error):
    """Raised when a sandbox was terminated before its command ended, or an operation needs it running."""


class SandboxFilesystemError(Error):
    """Raised when a file operation in a sandbox fails: a missing path, a directory where a file is needed."""


class InputCancelledError(Error):
    """Raised by ``get()`` (and ``.map``) for an input that was cancelled before it ended."""


class InputCancellation(BaseException):  # noqa: N818 - Modal's name
    """Modal's name for what a cancelled input raises inside its container (not raised by MiniModal yet)."""


class ImageBuildError(Error):
    """Raised when an image fails to build; no call is queued against it."""


class SerializationError(Error):
    """Raised when a value cannot be pickled locally or unpickled from the remote side."""


# One table shared by the API (exception -> status) and the SDK (status/type -> exception).
HTTP_STATUS: dict[type[Error], int] = {
    InvalidError: 400,
    UnsupportedOptionError: 400,
    SerializationError: 400,
    AuthError: 401,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    OutputExpiredError: 410,
    SandboxTerminatedError: 409,
    SandboxTimeoutError: 409,
    SandboxFilesystemError: 400,
    PayloadTooLargeError: 413,
    RateLimitError: 429,
    ServiceError: 503,
}

BY_NAME: dict[str, type[Error]] = {
    cls.__name__: cls
    for cls in (
        Error,
        InvalidError,
        PayloadTooLargeError,
        UnsupportedOptionError,
        InsufficientResourcesError,
        AuthError,
        PermissionDeniedError,
        RateLimitError,
        NotFoundError,
        ImageNotFoundError,
        ServiceError,
        RemoteError,
        FunctionTimeoutError,
        OutputExpiredError,
        SandboxTimeoutError,
        SandboxTerminatedError,
        SandboxFilesystemError,
        InputCancelledError,
        ImageBuildError,
        SerializationError,
    )
}


def status_for(exc: Error) -> int:
    """The HTTP status the API answers with for ``exc``."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def from_response(status: int, error_type: str | None, message: str) -> Error:
    """Rebuild the typed error the server described in an ``{"error": {...}}`` body."""
    cls = BY_NAME.get(error_type or "")
    if cls is None:
        by_status = {v: k for k, v in HTTP_STATUS.items() if k is not UnsupportedOptionError}
        cls = by_status.get(status, ServiceError)
    return cls(message)
