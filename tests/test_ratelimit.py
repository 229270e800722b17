"""Call submissions are rate-limited per token, in Redis: the limit holds across API processes."""

from __future__ import annotations

from collections.abc import Iterator

import cloudpickle
import pytest
import requests

from minimodal import protocol
from minimodal._client import Client
from tests.conftest import Stack, free_port, stop_process, wait_for


@pytest.fixture
def limited_apis(stack: Stack) -> Iterator[list[str]]:
    """Two more API processes on the stack with a low limit: one submission per 5 s, bursts of 3."""
    urls, names = [], []
    for n in range(2):
        port, name = free_port(), f"api-limited-{n}"
        stack.spawn(
            name,
            "api",
            "--port",
            str(port),
            extra_env={"MINIMODAL_CALL_RATE_LIMIT": "0.2", "MINIMODAL_CALL_RATE_BURST": "3"},
        )
        names.append(name)
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            wait_for(lambda url=url: _answers(url), 30, "the limited API to answer")
        yield urls
    finally:
        for name in names:
            stop_process(stack.processes.pop(name))


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=1).ok
    except requests.RequestException:
        return False


def _submit(url: str, token: str, function_id: str) -> requests.Response:
    args = protocol.b64(cloudpickle.dumps(((1,), {})))
    return requests.post(
        f"{url}/v1/functions/{function_id}/calls",
        json={"inputs": [{"args": args}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _function(stack: Stack, token: str) -> str:
    code = protocol.b64(cloudpickle.dumps(abs))
    reply = requests.post(
        f"{stack.url}/v1/apps",
        json={"functions": [{"tag": "f", "code": code}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return reply.json()["functions"]["f"]


def test_submissions_past_the_limit_answer_429_with_retry_after_across_api_processes(
    stack: Stack, limited_apis: list[str]
) -> None:
    token, other = stack.new_user("rate-limited"), stack.new_user("rate-bystander")
    function_id = _function(stack, token)
    replies = [_submit(limited_apis[i % 2], token, function_id) for i in range(5)]  # alternating processes
    assert [r.status_code for r in replies] == [201, 201, 201, 429, 429]
    refused = replies[3]
    assert refused.json()["error"]["type"] == "RateLimitError"
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    # Only submissions count, only this token's: reading and other users go on.
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{limited_apis[0]}/v1/me", headers=headers, timeout=10).status_code == 200
    assert _submit(limited_apis[1], other, _function(stack, other)).status_code == 201


def test_the_sdk_waits_as_retry_after_says_and_then_submits(stack: Stack, limited_apis: list[str]) -> None:
    token = stack.new_user("rate-patient")
    function_id = _function(stack, token)
    for _ in range(3):
        assert _submit(limited_apis[0], token, function_id).status_code == 201
    args = protocol.b64(cloudpickle.dumps(((1,), {})))
    reply = Client(limited_apis[1], token).request(
        "POST", f"/v1/functions/{function_id}/calls", json={"inputs": [{"args": args}]}
    )
    assert reply["call_id"].startswith("fc-")
