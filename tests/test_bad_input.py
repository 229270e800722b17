"""Bad input gets a clear, typed error and loses nothing."""

from __future__ import annotations

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
        ("schedule", object()),
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
    with pytest.raises(InvalidError, match="same major.minor"):
        minimodal.Image.debian_slim(python_version="3.9")
    with pytest.raises(TypeError, match="app.cls"):
        app.function()(basic.CustomError)
