"""``/v1/secrets``: the token's user's named secrets. No route ever answers with a secret's values.

``POST /v1/secrets`` ``{"name", "values": {NAME: value}, "overwrite": false}`` stores one (encrypted,
see :mod:`mm_app.vault`); ``GET /v1/secrets`` lists names and variable names; ``GET`` and ``DELETE
/v1/secrets/{name}`` show or delete one. Another user's secret is 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g
from sqlalchemy import select

from minimodal.exception import NotFoundError

from .. import vault
from ..models import SecretRecord
from .auth import authenticate
from .schema import Body, Doc, Reply, Timestamp
from .services import services

bp = Blueprint("secrets", __name__, url_prefix="/v1")
bp.before_request(authenticate)
doc = Doc("secrets")
_NAMED = {"name": "secret name"}


class NewSecret(Body):
    name: str
    values: dict[str, Any]
    overwrite: bool = False


class SecretView(Reply):
    name: str
    keys: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class Secrets(Reply):
    secrets: list[SecretView]


class Deleted(Reply):
    deleted: str


@bp.post("/secrets")
@doc("Store a secret (encrypted); 201 when new, 200 when overwritten", body=NewSecret, reply=SecretView, ok=201)
def create_secret(body: NewSecret):  # type: ignore[no-untyped-def]
    name, values, overwrite = body.name, body.values, body.overwrite
    with services().db.write() as session:
        existed = vault.named(session, g.user.id, name) is not None
        record = vault.put(session, g.user.id, name, values, overwrite)
        return vault.describe(record), 200 if existed else 201


@bp.get("/secrets")
@doc("The user's secrets: names and variable names, never values", reply=Secrets)
def list_secrets():  # type: ignore[no-untyped-def]
    with services().db.read() as session:
        records = session.scalars(
            select(SecretRecord)
            .where(SecretRecord.user_id == g.user.id, SecretRecord.name.is_not(None))
            .order_by(SecretRecord.name)
        )
        return {"secrets": [vault.describe(r) for r in records]}


def _named(session, name: str) -> SecretRecord:  # type: ignore[no-untyped-def]
    record = vault.named(session, g.user.id, name)
    if record is None:
        raise NotFoundError(f"secret {name!r} does not exist")
    return record


@bp.get("/secrets/<name>")
@doc("One secret, without its values", reply=SecretView, errors=(404,), params=_NAMED)
def show_secret(name: str):  # type: ignore[no-untyped-def]
    with services().db.read() as session:
        return vault.describe(_named(session, name))


@bp.delete("/secrets/<name>")
@doc("Delete a secret", reply=Deleted, errors=(404,), params=_NAMED)
def delete_secret(name: str):  # type: ignore[no-untyped-def]
    with services().db.write() as session:
        session.delete(_named(session, name))
    return {"deleted": name}
