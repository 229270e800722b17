"""Users: ``POST /v1/users`` (admin) creates one and returns its token once; ``PATCH`` changes quota/weight.

``POST /v1/tokens/revoke`` revokes the caller's own token, or (admin) the token of ``{"user": name}``;
every request authenticates against the database, so the next request with it answers 401.
"""

from __future__ import annotations

from flask import Blueprint, g
from pydantic import Field
from sqlalchemy import select

from minimodal.exception import NotFoundError, PermissionDeniedError

from ..accounts import create_user
from ..models import UserRecord, utcnow
from .auth import authenticate, users_changed
from .schema import Body, Doc, Positive, Reply
from .services import services

bp = Blueprint("users", __name__, url_prefix="/v1")
bp.before_request(authenticate)
doc = Doc("users")


class NewUser(Body):
    name: str
    quota: Positive | None = None
    weight: Positive | None = None


class UserChange(Body):
    quota: Positive | None = None
    weight: Positive | None = None


class Revoke(Body):
    user: str | None = Field(None, description="whose token (admin only when not the caller)")


class UserView(Reply):
    name: str
    quota: int
    weight: int
    is_admin: bool


class NewUserView(Reply):
    name: str
    quota: int
    weight: int
    token: str


class Revoked(Reply):
    user: str
    revoked_at: str


@bp.get("/me")
@doc("The token's user", reply=UserView)
def me():  # type: ignore[no-untyped-def]
    return g.user.to_json()


@bp.post("/users")
@doc("Create a user (admin); the token is shown once", body=NewUser, reply=NewUserView, ok=201, admin=True)
def create(body: NewUser):  # type: ignore[no-untyped-def]
    svc = services()
    name = body.name
    quota = body.quota or svc.settings["default_quota"]
    weight = body.weight or svc.settings["default_weight"]
    with svc.db.write() as session:
        token = create_user(session, name, quota=quota, weight=weight)
        user = session.scalar(select(UserRecord).where(UserRecord.name == name))
        assert user is not None
        user_id = user.id
    svc.pending.set_quota(user_id, quota, weight=weight)
    users_changed()
    return {"name": name, "quota": quota, "weight": weight, "token": token}, 201


@bp.patch("/users/<name>")
@doc(
    "Change a user's quota or weight (admin)",
    body=UserChange,
    reply=UserView,
    admin=True,
    errors=(404,),
    params={"name": "user name"},
)
def update(name: str, body: UserChange):  # type: ignore[no-untyped-def]
    quota, weight = body.quota, body.weight
    svc = services()
    with svc.db.write() as session:
        user = session.scalar(select(UserRecord).where(UserRecord.name == name))
        if user is None:
            raise NotFoundError(f"no user named {name!r}")
        if quota is not None:
            user.quota = quota
        if weight is not None:
            user.weight = weight
        result = user.to_json()
        user_id = user.id
    svc.pending.set_quota(user_id, result["quota"], weight=result["weight"])  # the dispatcher's next pass uses them
    users_changed()  # the API processes' cached users carry the old quota and weight
    return result


@bp.post("/tokens/revoke")
@doc(
    "Revoke the caller's token, or (admin) the token of `user`; refused from the next request on",
    body=Revoke,
    optional_body=True,
    reply=Revoked,
    errors=(403, 404),
)
def revoke(body: Revoke):  # type: ignore[no-untyped-def]
    """Revoke a token at once: the caller's own, or with ``user`` (admin only) another user's."""
    name = body.user or g.user.name
    if name != g.user.name and not g.user.is_admin:
        raise PermissionDeniedError("revoking another user's token needs an admin token")
    with services().db.write() as session:
        user = session.scalar(select(UserRecord).where(UserRecord.name == name))
        if user is None:
            raise NotFoundError(f"no user named {name!r}")
        user.revoked_at = user.revoked_at or utcnow()
        revoked_at = user.revoked_at
    users_changed()  # refused from the next request on, by every API process
    return {"user": name, "revoked_at": revoked_at.isoformat()}
