"""Deployed apps: persistent, versioned, looked up by name.

``POST /v1/deployments`` stores a new version of an app (same body as ``POST /v1/apps``) and makes it
the current one in the same transaction as the previous version is marked ``replaced``: a lookup sees
one version or the other, never a mix. A replaced version's functions keep their records, so calls in
flight (and handles looked up before the redeploy) finish on the old code. ``.../stop`` stops the
current version; ``.../history`` lists versions and recent calls (scheduled runs among them).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from flask import Blueprint, g
from pydantic import Field
from sqlalchemy import func, select

from minimodal import protocol
from minimodal.exception import InvalidError, NotFoundError

from .. import sandboxes, vault
from ..models import AppRecord, CallRecord, DeploymentRecord, FunctionRecord, FunctionSpecRecord, InputRecord, utcnow
from ..ownership import owned
from ..registry import needs_of, task_limit
from .apps import NewApp, after_change, after_stop, parse_options, register_app, stop_record, web_url
from .auth import authenticate
from .schema import Body, Doc, Reply
from .services import services

bp = Blueprint("deploys", __name__, url_prefix="/v1")
bp.before_request(authenticate)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HISTORY_CALLS = 50  # ``history`` shows this many of the newest calls
doc = Doc("deployments")
_NAMED = {"name": "the deployed app's name"}


class NewDeployment(NewApp):
    name: str  # a deployed app needs one


class Deployed(Reply):
    app_id: str
    name: str
    version: int
    functions: dict[str, str] = Field(description="tag -> function id")
    web_urls: dict[str, str]


class DeployedFunction(Reply):
    function_id: str
    app_id: str
    version: int
    spec: dict[str, Any]
    web_url: str


class DeploymentStopped(Reply):
    name: str
    app_id: str
    version: int
    state: str


class History(Reply):
    name: str
    versions: list[Any]
    calls: list[Any]


class NewVariant(Body):
    options: dict[str, Any]
    secrets: list[Any] | None = Field(None, description="deploy specs, as in POST /v1/apps")


class Variant(Reply):
    function_id: str
    tag: str
    options: dict[str, Any]


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidError(f"app name {name!r}: give 1-64 letters, digits, '-', '_' or '.' (a deployed app needs one)")
    return name


def current(session: Any, user_id: int, name: str) -> tuple[DeploymentRecord, AppRecord] | None:
    """The newest version of ``name`` and its app record (which may be stopped)."""
    deployment = session.scalars(
        select(DeploymentRecord)
        .where(DeploymentRecord.user_id == user_id, DeploymentRecord.name == name)
        .order_by(DeploymentRecord.version.desc())
        .limit(1)
    ).first()
    if deployment is None:
        return None
    return deployment, session.get(AppRecord, deployment.app_id)


@bp.post("/deployments")
@doc(
    "Deploy a new version of a named app (body as POST /v1/apps); it becomes the current version",
    body=NewDeployment,
    reply=Deployed,
    ok=201,
    errors=(404,),
)
def deploy(body: NewDeployment):  # type: ignore[no-untyped-def]
    name = check_name(body.name)
    specs = body.specs()
    found: dict[str, Any] = {}

    def switch(session: Any, app_id: str, records: list[FunctionRecord]) -> None:
        previous = current(session, g.user.id, name)
        version = 1
        if previous is not None:
            version = previous[0].version + 1
            if previous[1].state == "deployed":
                previous[1].state, previous[1].stopped_at = "replaced", utcnow()
        session.add(DeploymentRecord(user_id=g.user.id, name=name, version=version, app_id=app_id))
        found["version"] = version

    app_id, ids = register_app(name, specs, state="deployed", before_commit=switch)
    after_change(g.user.id)
    webs = {}
    with services().db.read() as session:
        for spec in session.scalars(select(FunctionSpecRecord).where(FunctionSpecRecord.function_id.in_(ids.values()))):
            if spec.spec.get("web"):
                tag = next(t for t, f in ids.items() if f == spec.function_id)
                webs[tag] = web_url(g.user.name, name, tag)
    return {"app_id": app_id, "name": name, "version": found["version"], "functions": ids, "web_urls": webs}, 201


@bp.get("/deployments/<name>/functions/<tag>")
@doc(
    "Look up a function of the current version of a deployed app",
    reply=DeployedFunction,
    errors=(404,),
    params={**_NAMED, "tag": "the function's tag"},
)
def lookup(name: str, tag: str):  # type: ignore[no-untyped-def]
    """The current version's function ``tag`` (``Function.from_name``)."""
    with services().db.read() as session:
        found = current(session, g.user.id, name)
        if found is None or found[1].state != "deployed":
            raise NotFoundError(f"no deployed app {name!r}; deploy it with `minimodal deploy FILE`")
        deployment, app = found
        record = session.scalars(
            select(FunctionRecord).where(FunctionRecord.app_id == app.id, FunctionRecord.tag == tag)
        ).first()
        if record is None:
            tags = session.scalars(select(FunctionRecord.tag).where(FunctionRecord.app_id == app.id)).all()
            raise NotFoundError(f"app {name!r} has no function {tag!r} (it has: {', '.join(sorted(tags)) or 'none'})")
        spec = session.get(FunctionSpecRecord, record.id)
        spec_json = spec.spec if spec is not None else {}
        reply = {
            "function_id": record.id,
            "app_id": app.id,
            "version": deployment.version,
            "spec": spec_json,
        }
        if spec_json.get("web"):
            reply["web_url"] = web_url(g.user.name, name, tag)
        return reply


@bp.post("/deployments/<name>/stop")
@doc(
    "Stop the current version of a deployed app (its schedules stop too)",
    reply=DeploymentStopped,
    errors=(404,),
    params=_NAMED,
)
def stop(name: str):  # type: ignore[no-untyped-def]
    with services().db.write() as session:
        found = current(session, g.user.id, name)
        if found is None:
            raise NotFoundError(f"no deployed app {name!r}")
        deployment, app = found
        function_ids, _ = stop_record(session, app)
    after_stop(function_ids)
    sandboxes.terminate_app(services().db, services().redis, app.id)  # `app stop` ends the app's sandboxes
    return {"name": name, "app_id": deployment.app_id, "version": deployment.version, "state": "stopped"}


@bp.get("/deployments/<name>/history")
@doc("A deployed app's versions and its newest calls", reply=History, errors=(404,), params=_NAMED)
def history(name: str):  # type: ignore[no-untyped-def]
    """Every version of ``name`` (newest first) and its newest calls, scheduled runs included."""
    with services().db.read() as session:
        rows = session.execute(
            select(DeploymentRecord, AppRecord)
            .join(AppRecord, AppRecord.id == DeploymentRecord.app_id)
            .where(DeploymentRecord.user_id == g.user.id, DeploymentRecord.name == name)
            .order_by(DeploymentRecord.version.desc())
        ).all()
        if not rows:
            raise NotFoundError(f"no deployed app {name!r}")
        versions = {d.app_id: d.version for d, _ in rows}
        calls = session.execute(
            select(CallRecord.id, CallRecord.created_at, FunctionRecord.tag, FunctionRecord.app_id)
            .join(FunctionRecord, FunctionRecord.id == CallRecord.function_id)
            .where(FunctionRecord.app_id.in_(list(versions)))
            .order_by(CallRecord.created_at.desc())
            .limit(HISTORY_CALLS)
        ).all()
        statuses: dict[str, dict[str, int]] = {}
        if calls:
            for call_id, status, count in session.execute(
                select(InputRecord.call_id, InputRecord.status, func.count())
                .where(InputRecord.call_id.in_([c.id for c in calls]))
                .group_by(InputRecord.call_id, InputRecord.status)
            ):
                statuses.setdefault(call_id, {})[status] = count
        return {
            "name": name,
            "versions": [
                {
                    "version": d.version,
                    "app_id": d.app_id,
                    "state": a.state,
                    "deployed_at": d.created_at.isoformat(),
                    "stopped_at": a.stopped_at.isoformat() if a.stopped_at else None,
                }
                for d, a in rows
            ],
            "calls": [
                {
                    "call_id": c.id,
                    "function": c.tag,
                    "version": versions[c.app_id],
                    "created_at": c.created_at.isoformat(),
                    "statuses": statuses.get(c.id, {}),
                }
                for c in calls
            ],
        }


@bp.post("/functions/<function_id>/variants")
@doc(
    "The same function with other options (with_options); one variant per option set",
    body=NewVariant,
    reply=Variant,
    ok=201,
    errors=(404,),
)
def variant(function_id: str, body: NewVariant):  # type: ignore[no-untyped-def]
    """The same code with other options (``with_options``): one function per distinct option set, reused.

    ``secrets`` (deploy specs, as in ``POST /v1/apps``), when given, replace the base function's.
    """
    overrides, secret_specs = body.options, body.secrets
    with services().db.write() as session:
        base = owned(session, FunctionRecord, function_id, g.user.id, "function")
        inherited = {k: v for k, v in base.options.items() if k != "secrets"}  # resolved ids, not an option
        options = parse_options(base.tag, {**inherited, **overrides})
        secrets_of = {"specs": secret_specs} if secret_specs is not None else {"ids": base.options.get("secrets")}
        identity = {**options, "secrets": secrets_of} if secret_specs or base.options.get("secrets") else options
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        tag = f"{base.tag.split('@')[0]}@{digest}"
        found = session.scalars(
            select(FunctionRecord).where(FunctionRecord.app_id == base.app_id, FunctionRecord.tag == tag)
        ).first()
        if found is not None:
            return {"function_id": found.id, "tag": tag, "options": _shown(found.options)}
        # Its own pool: runners are kept per code hash, and the hash covers the option set and its secrets.
        code_hash = hashlib.sha256(base.code + json.dumps(identity, sort_keys=True).encode()).hexdigest()
        if secret_specs:
            options["secrets"] = vault.attach(session, g.user.id, tag, secret_specs)
        elif secret_specs is None and base.options.get("secrets"):
            options["secrets"] = base.options["secrets"]
        spec = session.get(FunctionSpecRecord, base.id)
        record = FunctionRecord(
            id=protocol.new_id("fu"),
            app_id=base.app_id,
            user_id=g.user.id,
            tag=tag,
            code=base.code,
            code_hash=code_hash,
            options=options,
            image_id=base.image_id,
            image_tag=base.image_tag,
            queue=base.queue,
        )
        session.add(record)
        session.flush()
        if spec is not None:
            session.add(FunctionSpecRecord(function_id=record.id, spec=spec.spec))
        new_id, queue = record.id, record.queue
    svc = services()
    svc.pending.register_functions(
        {new_id: queue},
        limits={new_id: task_limit(options)} if options.get("max_containers") else {},
        warm={new_id: options["min_containers"]} if options.get("min_containers") else {},
        needs={new_id: needs_of(options, queue)},
    )
    return {"function_id": new_id, "tag": tag, "options": _shown(options)}, 201


def _shown(options: dict[str, Any]) -> dict[str, Any]:
    """A function's options as its owner sees them: secret ids stay on the server."""
    return {k: v for k, v in options.items() if k != "secrets"}
