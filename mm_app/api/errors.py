"""One table maps errors to HTTP statuses; every error answers ``{"error": {"type", "message"}}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from minimodal.exception import (
    AuthError,
    Error,
    InvalidError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceError,
    status_for,
)

logger = logging.getLogger("minimodal.api")

_HTTP_TYPES = {400: InvalidError, 401: AuthError, 404: NotFoundError, 413: PayloadTooLargeError}


def error_response(error_type: str, message: str, status: int):  # type: ignore[no-untyped-def]
    response = jsonify({"error": {"type": error_type, "message": message}})
    response.status_code = status
    return response


def register(app: Flask) -> None:
    @app.errorhandler(Error)
    def _minimodal_error(exc: Error):  # type: ignore[no-untyped-def]
        response = error_response(type(exc).__name__, str(exc), status_for(exc))
        if isinstance(exc, RateLimitError) and exc.retry_after:
            response.headers["Retry-After"] = str(int(exc.retry_after))
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        error_type = _HTTP_TYPES.get(status, InvalidError if status < 500 else ServiceError).__name__
        message = exc.description or exc.name
        if status == 413:
            message = "the request body is over the maximum payload size (MINIMODAL_MAX_PAYLOAD_SIZE)"
        return error_response(error_type, message, status)

    @app.errorhandler(RedisError)
    def _redis_error(exc: RedisError):  # type: ignore[no-untyped-def]
        logger.exception("Redis failed")
        return error_response("ServiceError", f"Redis is not answering ({type(exc).__name__}); retry shortly", 503)

    @app.errorhandler(SQLAlchemyError)
    def _db_error(exc: SQLAlchemyError):  # type: ignore[no-untyped-def]
        logger.exception("database failed")
        return error_response("ServiceError", f"the database failed ({type(exc).__name__}); retry shortly", 503)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        logger.exception("unexpected error")
        return error_response("ServiceError", "internal error; the server log has the details", 500)
