"""``/openapi.json`` describes exactly the routes the API has, and is a valid OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from flask import Flask
from openapi_spec_validator import validate

from mm_app.api import create_app
from mm_app.api.openapi import document
from tests.conftest import Stack

_AUTOMATIC = {"OPTIONS"}  # Flask answers OPTIONS for every route by itself


def built_app(tmp_path: Path) -> Flask:
    # The factory connects to nothing at build time: Redis is lazy, SQLite is a file under tmp_path.
    app = create_app({"redis_url": "redis://127.0.0.1:1/0", "database_url": f"sqlite:///{tmp_path / 'mm.db'}"})
    app.extensions["minimodal"].db.dispose()
    return app


def routes_of_the_app(app: Flask) -> set[tuple[str, str]]:
    """(path in OpenAPI form, method) of every rule of the app."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue  # Flask's default /static route serves nothing here (the dashboard's files are listed)
        methods = set(rule.methods or ()) - _AUTOMATIC
        if "GET" in methods:
            methods.discard("HEAD")  # added by Werkzeug to every GET rule
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(path, method.lower()) for method in methods}
    return found


def test_the_openapi_document_lists_exactly_the_routes_of_the_app(tmp_path: Path) -> None:
    app = built_app(tmp_path)
    documented = {(path, method) for path, item in document(app)["paths"].items() for method in item}
    routes = routes_of_the_app(app)
    assert routes - documented == set(), "routes without @doc(...) (mm_app/api/schema.py)"
    assert documented - routes == set(), "documented routes the app does not have"


def test_every_path_parameter_is_declared_and_every_operation_answers_something(tmp_path: Path) -> None:
    for path, item in document(built_app(tmp_path))["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{([^}]+)}", path)), f"{method.upper()} {path}"
            assert operation["responses"] and operation["summary"], f"{method.upper()} {path}"


def test_openapi_json_is_served_without_a_token_and_is_a_valid_openapi_3_document(stack: Stack) -> None:
    reply = requests.get(stack.url + "/openapi.json", timeout=10)
    assert reply.status_code == 200
    body = reply.json()
    assert body["openapi"].startswith("3.") and body["servers"] == [{"url": stack.url}]
    validate(body)
    assert body["paths"]["/stats"]["get"]["security"] == [{"bearer": []}]
    assert body["paths"]["/ready"]["get"]["security"] == []
