"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the app's routes and their models.

Nothing here names a route: :func:`document` walks ``app.url_map`` and reads the :class:`.schema.Operation`
that ``@Doc(...)`` left on each view, turning its pydantic models into JSON Schema
(``model_json_schema``; OpenAPI 3.1's schemas are JSON Schema 2020-12, so they go in as they are).
tests/test_openapi.py checks that every route of the app is in the document.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, request
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from .schema import JSON, Doc, Operation, Reply

bp = Blueprint("openapi", __name__)
doc = Doc("operations", security="none")

_REF = "#/components/schemas/{model}"
_RULE_ARG = re.compile(r"<(?:([^:<>]+):)?([^<>]+)>")
_ALWAYS = {"OPTIONS"}  # Flask answers OPTIONS for every route by itself

# How a path parameter is described unless the route says otherwise.
_PATH_PARAMS = {
    "app_id": "app id (ap-...)",
    "blob_id": "blob id",
    "call_id": "function call id (fc-...)",
    "container_id": "container id (ct-...)",
    "function_id": "function id (fu-...)",
    "image_id": "image id (im-...)",
    "process_id": "process id (sp-...), or ep for the entrypoint",
    "sandbox_id": "sandbox id (sb-...)",
    "sha": "sha256 hex digest of the content",
    "volume_id": "volume id (vo-...)",
}

_ERROR_TEXT = {
    400: "Invalid request",
    401: "Missing, invalid or revoked token",
    403: "Not an admin, or not a worker on an internal route",
    404: "Not found (or not yours)",
    409: "The sandbox has ended",
    410: "Outputs expired",
    413: "Payload too large",
    429: "Too many call submissions for this token; see Retry-After",
    503: "A service is down",
}


class ErrorDetail(BaseModel):
    type: str
    message: str


class Error(Reply):
    """Every error: ``type`` is a minimodal.exception name."""

    error: ErrorDetail


class _Schemas(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # a property's title repeats its name


class _Components:
    """The document's ``components/schemas``, filled as operations refer to models."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, kind: Any) -> dict[str, Any]:
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return TypeAdapter(kind).json_schema(ref_template=_REF, schema_generator=_Schemas)
        schema = kind.model_json_schema(ref_template=_REF, schema_generator=_Schemas)
        for name, inner in {**schema.pop("$defs", {}), kind.__name__: schema}.items():
            if self.schemas.setdefault(name, inner) != inner:
                raise ValueError(f"two request or reply models are named {name}: rename one")
        return {"$ref": _REF.format(model=kind.__name__)}

    def properties(self, model: type[BaseModel]) -> dict[str, Any]:
        return model.model_json_schema(ref_template=_REF, schema_generator=_Schemas).get("properties", {})


def _operation(op: Operation, rule: str, components: _Components) -> dict[str, Any]:
    params = []
    for converter, name in _RULE_ARG.findall(rule):
        schema = {"type": "integer"} if converter == "int" else {"type": "string"}
        text = op.params.get(name) or _PATH_PARAMS.get(name, name.replace("_", " "))
        params.append({"name": name, "in": "path", "required": True, "description": text, "schema": schema})
    if op.query is not None:
        for name, schema in components.properties(op.query).items():
            text = schema.pop("description", "")
            if "anyOf" in schema:  # `X | None = None`: absent, never sent as null
                kept = [s for s in schema.pop("anyOf") if s.get("type") != "null"]
                schema.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
                if schema.get("default", "") is None:
                    del schema["default"]
            params.append({"name": name, "in": "query", "required": False, "description": text, "schema": schema})
    ok: dict[str, Any] = {"description": {200: "OK", 201: "Created", 101: "Switching Protocols"}.get(op.ok, "OK")}
    if op.reply is not None:
        ok["content"] = {op.media: {"schema": components.ref(op.reply)}}
    responses: dict[str, Any] = {str(op.ok): ok}
    has_body = op.body is not None or op.raw_body is not None
    # Any authenticated route may answer 400 (a bad parameter); any with a body 413 (over the payload limit).
    common = ((400, 401) if op.security != "none" else ()) + ((413,) if has_body else ())
    common += (403,) if op.admin or op.security == "worker" else ()
    for status in sorted(set(common + op.errors)):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    operation: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": responses}
    if op.description:
        operation["description"] = op.description
    if params:
        operation["parameters"] = params
    if op.body is not None:
        schema = components.ref(op.body)
        operation["requestBody"] = {"required": not op.optional_body, "content": {JSON: {"schema": schema}}}
    elif op.raw_body is not None:
        binary = {"type": "string", "format": "binary"}
        operation["requestBody"] = {"required": True, "content": {op.raw_body: {"schema": binary}}}
    operation["security"] = [] if op.security == "none" else [{op.security: []}]
    return operation


def document(app: Flask, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes; ``server_url`` fills ``servers`` when given."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = getattr(app.view_functions[rule.endpoint], "__openapi__", None)
        if op is None:
            continue  # Flask's own /static; tests/test_openapi.py fails for any other route left out
        methods = set(rule.methods or ()) - _ALWAYS
        if "GET" in methods:
            methods.discard("HEAD")  # Werkzeug adds it to every GET rule
        path = _RULE_ARG.sub(r"{\2}", rule.rule)
        for method in sorted(methods):
            paths.setdefault(path, {})[method.lower()] = _operation(op, rule.rule, components)
    error = components.ref(Error)
    result: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "MiniModal API",
            "version": "1",
            "description": 'Errors answer `{"error": {"type", "message"}}` with a minimodal.exception name.',
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "worker": {"type": "http", "scheme": "bearer", "description": "the workers' MINIMODAL_WORKER_TOKEN"},
            },
            "schemas": dict(sorted(components.schemas.items())),
            "responses": {
                f"E{status}": {"description": text, "content": {JSON: {"schema": error}}}
                for status, text in _ERROR_TEXT.items()
            },
        },
    }
    if server_url:
        result["servers"] = [{"url": server_url}]
    return result


@bp.get("/openapi.json")
@doc("This document", reply=dict[str, Any])
def openapi_json():  # type: ignore[no-untyped-def]
    return document(current_app._get_current_object(), request.host_url.rstrip("/"))  # type: ignore[attr-defined]
