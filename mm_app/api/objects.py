"""``POST /v1/objects``: Dict and Queue operations of the token's user (see :mod:`mm_app.objects`).

One route for every operation, so that the SDK sends the same request body here as it sends from
inside a function through its runner. A blocking queue get waits at most ``MAX_BLOCK_SECONDS``.
"""

from __future__ import annotations

from flask import Blueprint, g

from .. import objects
from .auth import authenticate, json_body
from .services import services

bp = Blueprint("objects", __name__)
bp.before_request(authenticate)


@bp.post("/v1/objects")
def object_request():  # type: ignore[no-untyped-def]
    return objects.handle(services().redis, g.user.id, json_body())
