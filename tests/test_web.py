"""Web endpoints with real HTTP requests: FastAPI routes, a Flask wsgi_app, a FastAPI asgi_app, errors, auth."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

import minimodal
from minimodal.exception import InvalidError
from tests.conftest import ROOT, TEST_MAX_PAYLOAD, Stack
from tests.functions import webapps

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def deployed(stack: Stack, user: str) -> str:
    """Deploy the web app for a fresh user; return the user's token."""
    webapps.app.deploy()
    return user


def test_a_fastapi_endpoint_answers_get_with_query_and_post_with_json(deployed: str) -> None:
    url = webapps.greet.get_web_url()
    assert url is not None and url.endswith("/tests-web/greet")
    reply = requests.get(url, params={"name": "ann", "times": 2}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"greeting": "hello ann hello ann"}
    assert requests.get(url, params={"times": "many"}, timeout=60).status_code == 422  # FastAPI's validation
    reply = requests.post(webapps.total.get_web_url(), json={"values": [1, 2, 3.5]}, timeout=60)
    assert reply.status_code == 200 and reply.json() == {"total": 6.5, "count": 3}
    assert requests.get(webapps.total.get_web_url(), timeout=60).status_code == 405


def test_a_class_whose_only_methods_are_web_endpoints_answers_over_http(deployed: str) -> None:
    url = webapps.Greeter().hello.get_web_url()
    assert url is not None and url.endswith("/tests-web/Greeter.hello")
    reply = requests.get(url, params={"name": "ann"}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"said": "hi ann"}
    words = requests.get(webapps.Greeter().words.get_web_url() + "/2", timeout=60)
    assert words.status_code == 200 and words.json() == {"words": ["hi", "hi"]}, words.text


def test_a_flask_wsgi_app_serves_its_routes_with_headers_status_and_streaming(deployed: str) -> None:
    base = webapps.site.get_web_url()
    reply = requests.get(base + "/", headers={"X-Who": "bob"}, timeout=60)
    assert reply.status_code == 200 and reply.text == "index of bob"
    reply = requests.post(base + "/items/7?q=yes", json={"a": [1]}, timeout=60)
    assert reply.status_code == 201
    assert reply.json() == {"id": 7, "body": {"a": [1]}, "q": "yes"}
    assert requests.get(base + "/lines", timeout=60).text == "line 0\nline 1\nline 2\n"
    assert requests.get(base + "/nope", timeout=60).status_code == 404


def test_a_fastapi_asgi_app_serves_path_params_errors_and_a_streaming_response(deployed: str) -> None:
    base = webapps.api.get_web_url()
    assert requests.get(base + "/square/12", timeout=60).json() == {"square": 144}
    missing = requests.get(base + "/missing", timeout=60)
    assert missing.status_code == 404 and missing.json() == {"detail": "no such thing"}
    with requests.get(base + "/count", stream=True, timeout=60) as reply:
        assert reply.headers["X-Kind"] == "stream"
        assert b"".join(reply.iter_content(None)) == b"0\n1\n2\n3\n4\n"


def test_a_crashing_handler_answers_500_without_its_traceback_which_goes_to_the_app_logs(
    stack: Stack, deployed: str
) -> None:
    for fn in (webapps.crash, webapps.broken):
        reply = requests.get(fn.get_web_url(), timeout=60)
        assert reply.status_code == 500
        assert "secret" not in reply.text and "Traceback" not in reply.text
    logs = subprocess.run(
        [sys.executable, "-m", "minimodal", "app", "logs", webapps.app.app_id],
        env={**stack.env, "MINIMODAL_TOKEN": deployed},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "RuntimeError: secret detail that must not leak" in logs.stdout + logs.stderr
    assert "ValueError: secret wsgi detail" in logs.stdout + logs.stderr


def test_requires_proxy_auth_needs_the_owners_token_and_large_bodies_are_413(stack: Stack, deployed: str) -> None:
    url = webapps.private.get_web_url()
    assert requests.get(url, timeout=60).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=60).status_code == 401
    other = stack.new_user("web-stranger")
    assert requests.get(url, headers={"Authorization": f"Bearer {other}"}, timeout=60).status_code == 401
    reply = requests.get(url, headers={"Authorization": f"Bearer {deployed}"}, timeout=60)
    assert reply.status_code == 200 and reply.json() == {"secret": "ok"}
    big = requests.post(webapps.total.get_web_url(), data=b"x" * (TEST_MAX_PAYLOAD + 1), timeout=60)
    assert big.status_code == 413


def test_endpoints_are_found_by_name_and_unknown_ones_are_404(stack: Stack, deployed: str) -> None:
    looked_up = minimodal.Function.from_name("tests-web", "greet")
    assert looked_up.get_web_url() == webapps.greet.get_web_url()
    assert requests.get(f"{stack.url}/web/nobody/tests-web/greet", timeout=30).status_code == 404
    assert requests.get(webapps.greet.get_web_url().replace("/greet", "/nope"), timeout=30).status_code == 404


def test_web_decorators_check_their_options() -> None:
    with pytest.raises(InvalidError, match="method"):
        minimodal.fastapi_endpoint(method="FETCH")
    with pytest.raises(InvalidError, match="parentheses"):
        minimodal.wsgi_app(lambda: None)
