"""Request and reply models of the REST API, and ``@Doc(...)``: one statement per route of what it takes.

Every route names its body and query models (pydantic v2) and its reply model in one decorator::

    doc = Doc("secrets")

    @bp.post("/secrets")
    @doc("Store a secret", body=NewSecret, reply=SecretView, ok=201)
    def create_secret(body: NewSecret): ...

The decorator validates the request before the view runs, so the view gets a typed ``body`` (and
``query``); a refused request answers ``InvalidError`` (400) naming the field, in the error shape of
:mod:`.errors`. It also records the operation on the view, from which :mod:`.openapi` builds
``/openapi.json`` by walking the app's URL map: the same models both check requests and describe them.

``Body`` models are strict (no string-to-number coercion) and refuse unknown fields; ``Query`` models
parse the query string's text; ``Reply`` models only document what a route answers (every field may
be absent, and more may come).
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from flask import request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from minimodal.exception import InvalidError

from .auth import MAX_INT, require_admin

JSON = "application/json"
Int = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]  # what the database stores: larger is refused
Positive = Annotated[int, Field(ge=1, le=MAX_INT)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Security = Literal["bearer", "worker", "none"]


class Body(BaseModel):
    """A JSON request body: strict types, unknown fields refused (never silently ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Query(BaseModel):
    """Query-string parameters (text parsed to the field's type); parameters it does not name are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def _no_required(schema: dict[str, Any]) -> None:
    schema.pop("required", None)


class Reply(BaseModel):
    """What a route answers, for the document only: any field may be absent, and others may be present."""

    model_config = ConfigDict(json_schema_extra=_no_required)


@dataclass(frozen=True)
class Operation:
    """One route's description, as ``@Doc(...)`` recorded it on the view (``view.__openapi__``)."""

    summary: str
    tag: str
    security: Security
    body: type[BaseModel] | None = None
    query: type[Query] | None = None
    reply: Any = None  # a Reply model, or a type (str, bytes, dict[str, Any]) for TypeAdapter
    ok: int = 200
    media: str = JSON
    raw_body: str | None = None  # media type of a streamed, non-JSON body (the view reads it)
    optional_body: bool = False
    admin: bool = False
    errors: tuple[int, ...] = ()
    description: str = ""
    params: dict[str, str] = field(default_factory=dict)  # path parameter -> description, over the glossary


class Doc:
    """The decorator factory of one blueprint: its tag and how its routes authenticate."""

    def __init__(self, tag: str, *, security: Security = "bearer") -> None:
        self.tag, self.security = tag, security

    def __call__(
        self,
        summary: str,
        *,
        body: type[BaseModel] | None = None,
        query: type[Query] | None = None,
        reply: Any = None,
        ok: int = 200,
        media: str = JSON,
        raw_body: str | None = None,
        optional_body: bool = False,
        admin: bool = False,
        errors: tuple[int, ...] = (),
        description: str = "",
        params: dict[str, str] | None = None,
        security: Security | None = None,
        tag: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        operation = Operation(
            summary,
            tag or self.tag,
            security or self.security,
            body,
            query,
            reply,
            ok,
            media,
            raw_body,
            optional_body,
            admin,
            errors,
            description,
            params or {},
        )

        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(view)
            def checked(*args: Any, **kwargs: Any) -> Any:
                if admin:
                    require_admin()  # before the body: a non-admin learns nothing about what it sent
                if body is not None:
                    kwargs["body"] = parse_body(body, optional=optional_body)
                if query is not None:
                    kwargs["query"] = parse_query(query)
                return view(*args, **kwargs)

            checked.__openapi__ = operation  # type: ignore[attr-defined]
            return checked

        return decorator


def parse_body(model: type[BaseModel], *, optional: bool = False) -> Any:
    """The request's JSON object validated by ``model``; ``optional``: no body at all means the defaults."""
    if optional and not request.content_length:
        return model()
    try:
        raw = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes: not a ValueError, so not silenced
        raw = None
    if not isinstance(raw, dict):
        raise InvalidError("the request body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc, model) from None
    except RecursionError:
        raise InvalidError("the request body is nested too deeply") from None


def parse_query(model: type[Query]) -> Any:
    """The query string validated by ``model``: a list field takes every value of a repeated parameter."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in request.args:
            many = typing.get_origin(info.annotation) is list
            values[name] = request.args.getlist(name) if many else request.args[name]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise InvalidError(f"query parameter {_where(error['loc'])!r}: {error['msg']}") from None


_TYPE_NAMES = {
    "string_type": "str",
    "int_type": "int",
    "float_type": "a number",
    "bool_type": "bool",
    "list_type": "list",
    "dict_type": "dict",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "literal_error": None,
}


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The nested model that ``loc`` points into (list items and optional values followed)."""
    current: Any = model
    for part in loc:
        if isinstance(part, str):
            if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        while typing.get_origin(current) in (list, typing.Union, types.UnionType, Annotated):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = args[0] if args else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def invalid(exc: ValidationError, model: type[BaseModel]) -> InvalidError:
    """The first problem pydantic found, as the InvalidError a client reads (field named, fix implied)."""
    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        parent = unknown[0]["loc"][:-1]
        names = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == parent)
        where = _where(parent) if parent else "the request body"
        inner = _model_at(model, parent)
        known = f"; known: {sorted(inner.model_fields)}" if inner is not None else ""
        return InvalidError(f"{where} has unknown fields {names[:10]}{known}")
    error = errors[0]
    where, kind = _where(error["loc"]), error["type"]
    if kind == "missing":
        return InvalidError(f"missing field {where!r}")
    if _TYPE_NAMES.get(kind):
        return InvalidError(f"field {where!r} must be {_TYPE_NAMES[kind]}, got {type(error['input']).__name__}")
    return InvalidError(f"field {where!r}: {error['msg']}")
