"""``POST /v1/objects``: Dict and Queue operations of the token's user (see :mod:`mm_app.objects`).

One route for every operation, so that the SDK sends the same request body here as it sends from
inside a function through its runner. A blocking queue get waits at most ``MAX_BLOCK_SECONDS``.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, g
from pydantic import ConfigDict

from .. import objects
from .auth import authenticate
from .schema import Body, Doc
from .services import services

bp = Blueprint("objects", __name__)
bp.before_request(authenticate)
doc = Doc("objects")


class ObjectRequest(Body):
    """One operation; its arguments (``key``, ``value``, ``create``, ...) are checked by :mod:`mm_app.objects`."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["dict", "queue", "volume"]
    op: str
    name: str | None = None
    id: str | None = None


@bp.post("/v1/objects")
@doc(
    "One Dict or Queue operation of the token's user (the SDK's Dict and Queue use it)",
    body=ObjectRequest,
    reply=dict[str, Any],
    errors=(404,),
    description="Keys and values are base64 cloudpickles; another user's object answers 404.",
)
def object_request(body: ObjectRequest):  # type: ignore[no-untyped-def]
    return objects.handle(services().redis, g.user.id, body.model_dump(exclude_unset=True))
