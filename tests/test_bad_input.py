"""Bad input gets a clear, typed error and loses nothing."""

from __future__ import annotations

import contextlib
import json
import pickle

import cloudpickle
import pytest
import requests

import minimodal
from minimodal import protocol
from minimodal._client import Client
from minimodal.exception import (
    AuthError,
    FunctionTimeoutError,
    InvalidError,
    NotFoundError,
    PayloadTooLargeError,
    RemoteError,
    UnsupportedOptionError,
)
from tests.conftest import TEST_MAX_PAYLOAD, Stack, wait_for
from tests.functions import basic


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _error(reply: requests.Response) -> dict[str, str]:
    assert reply.headers["Content-Type"].startswith("application/json"), reply.text
    return reply.json()["error"]


def _function_id(stack: Stack, token: str) -> str:
    code = protocol.b64(cloudpickle.dumps(len))
    reply = requests.post(
        f"{stack.url}/v1/apps", json={"functions": [{"tag": "f", "code": code}]}, headers=_auth(token), timeout=10
    )
    assert reply.status_code == 201, reply.text
    return reply.json()["functions"]["f"]


def test_health_needs_no_token_but_everything_else_answers_401_without_one(stack: Stack) -> None:
    assert requests.get(f"{stack.url}/health", timeout=5).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        reply = requests.get(f"{stack.url}/v1/me", headers=headers, timeout=5)
        assert reply.status_code == 401
        assert _error(reply)["type"] == "AuthError"


def test_the_sdk_raises_auth_error_for_a_wrong_token(stack: Stack) -> None:
    with pytest.raises(AuthError, match="invalid or revoked token"):
        Client(stack.url, "mm_wrong").request("GET", "/v1/me")


def test_unknown_function_and_call_ids_answer_404_in_the_sdk_too(stack: Stack, user: str) -> None:
    client = Client(stack.url, user)
    with pytest.raises(NotFoundError, match="fu-nope"):
        client.request(
            "POST", "/v1/functions/fu-nope/calls", json={"inputs": [{"args": protocol.b64(pickle.dumps(((), {})))}]}
        )
    with pytest.raises(NotFoundError, match="fc-nope"):
        minimodal.FunctionCall.from_id("fc-nope", client).get(timeout=1)
    assert requests.get(f"{stack.url}/v1/calls/fc-nope", headers=_auth(user), timeout=5).status_code == 404


def test_another_users_function_and_call_answer_404(stack: Stack, user: str) -> None:
    with basic.app.run():
        fc = basic.square.spawn(3)
        assert fc.get() == 9
        function_id = basic.square.object_id
    other = stack.new_user("intruder-404")
    for path in (
        f"/v1/calls/{fc.object_id}",
        f"/v1/calls/{fc.object_id}/outputs?timeout=0",
        f"/v1/functions/{function_id}",
    ):
        reply = requests.get(stack.url + path, headers=_auth(other), timeout=5)
        assert reply.status_code == 404, path
        assert _error(reply)["type"] == "NotFoundError"
    args = protocol.b64(cloudpickle.dumps(((1,), {})))
    reply = requests.post(
        f"{stack.url}/v1/functions/{function_id}/calls",
        json={"inputs": [{"args": args}]},
        headers=_auth(other),
        timeout=5,
    )
    assert reply.status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b'{"inputs": "x"}', "'inputs' must be list"),
        (b'{"inputs": [{"args": "%%%"}]}', "not valid base64"),
        (b'{"inputs": [{"args": "aGVsbG8="}]}', "not a pickle"),
        (b'{"inputs": [{"what": 1}]}', "exactly one of"),
        (b'{"inputs": []}', "at least one input"),
        (b'{"inputs": [{"blob": "bl-missing"}]}', "no blob"),
    ],
)
def test_malformed_call_bodies_answer_4xx_with_a_message(stack: Stack, user: str, body: bytes, fragment: str) -> None:
    function_id = _function_id(stack, user)
    reply = requests.post(
        f"{stack.url}/v1/functions/{function_id}/calls",
        data=body,
        headers={**_auth(user), "Content-Type": "application/json"},
        timeout=5,
    )
    assert reply.status_code in (400, 404)
    assert fragment in _error(reply)["message"]


def test_a_function_whose_code_is_not_a_pickle_is_refused(stack: Stack, user: str) -> None:
    reply = requests.post(
        f"{stack.url}/v1/apps",
        json={"functions": [{"tag": "f", "code": protocol.b64(b"print(1)")}]},
        headers=_auth(user),
        timeout=5,
    )
    assert reply.status_code == 400
    assert "not a pickle" in _error(reply)["message"]


def test_a_payload_over_the_server_limit_answers_413(stack: Stack, user: str) -> None:
    too_big = b"\x80\x05" + b"x" * TEST_MAX_PAYLOAD + b"."
    reply = requests.put(f"{stack.url}/v1/blobs", data=too_big, headers=_auth(user), timeout=30)
    assert reply.status_code == 413
    assert _error(reply)["type"] == "PayloadTooLargeError"
    with pytest.raises(PayloadTooLargeError):
        Client(stack.url, user).request("PUT", "/v1/blobs", data=too_big)
    # The refused body was never read; the client drops that connection, so its next request (a POST,
    # which is never sent again) does not land on a socket the server may be closing.
    assert Client(stack.url, user).request("POST", "/v1/files/missing", json={"shas": []}) is not None


def test_the_sdk_refuses_a_payload_over_its_limit_before_sending(user: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIMODAL_MAX_PAYLOAD_SIZE", str(1024))
    with basic.app.run():
        with pytest.raises(PayloadTooLargeError, match="over the maximum"):
            basic.echo.remote(b"y" * 4096)


def test_arguments_and_results_over_the_inline_size_travel_as_blobs(user: str) -> None:
    three_mib = b"z" * (3 * 1024 * 1024)
    with basic.app.run():
        assert basic.echo.remote(three_mib) == three_mib
        assert len(basic.big.remote(5 * 1024 * 1024)) == 5 * 1024 * 1024


def test_a_runner_that_exits_fails_that_call_clearly_and_the_next_call_works(user: str) -> None:
    with basic.app.run():
        with pytest.raises(RemoteError, match="exited with code 3"):
            basic.exit_hard.remote(3)
        with pytest.raises(RemoteError, match="SIGSEGV"):
            basic.segfault.remote()
        assert basic.square.remote(12) == 144
        assert basic.exit_hard.map([1, 2], return_exceptions=True) is not None


def test_a_call_past_its_timeout_raises_function_timeout_error(user: str) -> None:
    with basic.app.run():
        with pytest.raises(FunctionTimeoutError, match="timeout of 1 s"):
            basic.sleep_past_timeout.remote(30)
        assert basic.sleep_past_timeout.remote(0) == 0


def test_every_accepted_call_ends_in_a_terminal_status(stack: Stack, user: str) -> None:
    with basic.app.run():
        calls = [
            basic.square.spawn(1),
            basic.raise_value_error.spawn("x"),
            basic.exit_hard.spawn(1),
            basic.sleep_past_timeout.spawn(5),
        ]

        def all_done() -> bool:
            return all(
                requests.get(f"{stack.url}/v1/calls/{fc.object_id}", headers=_auth(user), timeout=5).json()["done"]
                for fc in calls
            )

        wait_for(all_done, 60, "every call to end")
    statuses = [
        requests.get(f"{stack.url}/v1/calls/{fc.object_id}", headers=_auth(user), timeout=5).json()["statuses"]
        for fc in calls
    ]
    assert statuses == [{"completed": 1}, {"failed": 1}, {"failed": 1}, {"failed": 1}]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cloud", "aws"),
        ("proxy", object()),
    ],
)
def test_options_not_implemented_yet_raise_naming_the_option(option: str, value: object) -> None:
    app = minimodal.App("options")
    with pytest.raises(UnsupportedOptionError, match=option) as info:
        app.function(**{option: value})(basic.square.local)
    assert isinstance(info.value, NotImplementedError)


def test_deprecated_and_invalid_options_are_refused() -> None:
    app = minimodal.App("options")
    with pytest.raises(InvalidError, match="min_containers"):
        app.function(keep_warm=1)(basic.square.local)
    with pytest.raises(InvalidError, match="timeout"):
        app.function(timeout=0)(basic.square.local)
    with pytest.raises(InvalidError, match="max_containers"):
        app.function(max_containers=0)(basic.square.local)
    with pytest.raises(InvalidError, match="give a minimodal.Image"):
        app.function(image="python:3.11")(basic.square.local)
    with pytest.raises(InvalidError, match="Period"):
        app.function(schedule=object())(basic.square.local)
    with pytest.raises(InvalidError, match="major.minor string"):
        minimodal.Image.debian_slim(python_version=3.13)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="app.cls"):
        app.function()(basic.CustomError)


def _raw(stack: Stack, request: bytes, *, then: bytes = b"", timeout: float = 30) -> tuple[int, bytes, bytes]:
    """Send raw bytes; return the status, the headers and the body of the reply (read until it closes)."""
    import socket

    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        if then:
            with contextlib.suppress(OSError):  # the server may answer and close before taking it all
                sock.sendall(then)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head.split(b" ")[1]), head, body


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(stack: Stack, user: str) -> None:
    # Ten gigabytes announced, none sent: only a check of Content-Length can answer.
    for path in ("/v1/blobs", "/v1/files/" + "0" * 64, "/v1/apps"):
        method = b"POST" if path == "/v1/apps" else b"PUT"
        status, _, body = _raw(
            stack,
            method
            + b" "
            + path.encode()
            + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + user.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n",
        )
        assert status == 413, (path, body)
        assert json.loads(body)["error"]["type"] == "PayloadTooLargeError"


def test_a_chunked_body_is_cut_off_at_the_limit_without_reading_the_rest(stack: Stack, user: str) -> None:
    chunk = b"\x80\x05" + b"x" * (1024 * 1024 - 2)
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    over = framed * (TEST_MAX_PAYLOAD // len(chunk) + 2)  # past the limit; the final 0-chunk never comes
    status, _, body = _raw(
        stack,
        b"PUT /v1/blobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + user.encode()
        + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        then=over,
    )
    assert status == 413, body
    assert json.loads(body)["error"]["type"] == "PayloadTooLargeError"


def test_huge_or_too_many_headers_answer_4xx_json(stack: Stack, user: str) -> None:
    long_header = b"X-Big: " + b"a" * 70_000 + b"\r\n"
    many_headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    for extra in (long_header, many_headers):
        status, head, body = _raw(stack, b"GET /v1/me HTTP/1.1\r\nHost: x\r\n" + extra + b"Connection: close\r\n\r\n")
        assert 400 <= status < 500, (status, body)
        assert b"application/json" in head
        assert json.loads(body)["error"]["type"] == "InvalidError"
    long_token = requests.get(f"{stack.url}/v1/me", headers=_auth("t" * 60_000), timeout=10)
    assert long_token.status_code == 401 and _error(long_token)["type"] == "AuthError"


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("POST", "/v1/apps", {"name": "x", "functions": [], "deploy": True}, "unknown fields ['deploy']"),
        ("POST", "/v1/apps", {"functions": [{"tag": "f", "code": "gAVLAS4=", "secret": 1}]}, "unknown fields"),
        ("POST", "/v1/functions/{function}/calls", {"inputs": [], "more": True, "priority": 9}, "['priority']"),
        ("POST", "/v1/images", {"layers": [{"op": "debian_slim", "python": "3.11"}], "python": "3.11", "x": 1}, "x"),
        ("POST", "/v1/apps", "[" * 100_000, "JSON object"),
        ("POST", "/v1/apps", {"name": ["not", "a", "string"]}, "must be str"),
        ("POST", "/v1/functions/{function}/calls", {"inputs": [], "more": "yes"}, "must be bool"),
        ("POST", "/v1/functions/{function}/calls", {"inputs": [], "more": True, "wait": 10**400}, "wait"),
        ("GET", "/dead-letter-queue?page=99999999999999999999999", None, "page"),
        ("GET", "/v1/calls/{call}/stream?timeout=nan", None, "timeout"),
        ("GET", "/v1/calls/{call}/outputs?timeout=1e999", None, "timeout"),
        ("GET", "/v1/images/im-x?timeout=nan", None, "timeout"),
    ],
)
def test_unknown_fields_wrong_types_and_deep_nesting_answer_400_naming_the_problem(
    stack: Stack, user: str, method: str, path: str, body: object, fragment: str
) -> None:
    function_id = _function_id(stack, user)
    call = requests.post(
        f"{stack.url}/v1/functions/{function_id}/calls",
        json={"inputs": [], "more": True},
        headers=_auth(user),
        timeout=10,
    ).json()["call_id"]
    path = path.format(function=function_id, call=call)
    data = body if isinstance(body, str) else json.dumps(body) if body is not None else None
    reply = requests.request(
        method, stack.url + path, data=data, headers={**_auth(user), "Content-Type": "application/json"}, timeout=30
    )
    assert reply.status_code == 400, reply.text
    assert fragment in _error(reply)["message"]


def test_every_json_body_route_refuses_an_unknown_field_with_a_typed_400_naming_it(stack: Stack, user: str) -> None:
    # Given every route whose documented body is a JSON object that admits no other fields
    document = requests.get(stack.url + "/openapi.json", timeout=10).json()
    schemas = document["components"]["schemas"]
    routes = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content or {"bearer": []} not in operation["security"]:
                continue
            name = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            if schemas[name].get("additionalProperties") is False and "403" not in operation["responses"]:
                routes.append((method.upper(), path.replace("{", "x").replace("}", "")))
    assert len(routes) >= 12, routes  # the models cover the API, not a few routes
    for method, path in routes:
        # When a body carries a field the route does not know
        reply = requests.request(method, stack.url + path, json={"no_such_field": 1}, headers=_auth(user), timeout=10)
        # Then it is refused before anything is looked up, naming the field
        assert reply.status_code == 400, (method, path, reply.text)
        error = _error(reply)
        assert error["type"] == "InvalidError" and "unknown fields ['no_such_field']" in error["message"], (
            method,
            path,
            error,
        )
