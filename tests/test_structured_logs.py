"""``MINIMODAL_LOG_JSON=1``: every process writes JSON lines, and one call can be followed by its id across them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import RedisServer, Stack, start_stack, use_stack, wait_for
from tests.functions import basic

COMPONENTS = ("api", "dispatcher", "worker")


def json_lines(stack: Stack, name: str) -> list[dict[str, Any]]:
    """Every line of one process's log, each of which must be a JSON object."""
    entries = []
    for number, line in enumerate(stack.log(name).splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"{name}.log line {number} is not JSON: {line!r}")
    return entries


@pytest.fixture(scope="module")
def json_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own whose processes all log JSON lines (on Redis database 6)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIMODAL_LOG_JSON", "1")  # start_stack passes the environment on to every process
        stack = start_stack(redis_server, tmp_path_factory.mktemp("jsonlogs"), runtime="process", db=6)
    yield stack
    stack.stop()


def test_one_call_is_followed_by_its_id_across_api_dispatcher_and_worker_json_logs(
    json_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stack(json_stack, request, monkeypatch)
    with basic.app.run():
        call = basic.square.spawn(6)  # a lone user's call: the API's shortcut sends it (no dispatcher pass)
        assert call.get() == 36
        # A map of a function whose run time is not known yet: a task per input, the API's take leaves
        # the others queued, so the dispatcher sends them
        assert list(basic.sleep.map([0.0, 0.0, 0.0])) == [0.0, 0.0, 0.0]
        sleep_id = basic.sleep.object_id
    call_id = call.object_id
    map_id = wait_for(
        lambda: next((e["call_id"] for e in json_lines(json_stack, "api") if e.get("function_id") == sleep_id), None),
        30,
        "the map's call in the API's log",
    )

    def about(the_id: str, senders: tuple[str, ...]) -> Callable[[], dict[str, list[dict[str, Any]]] | None]:
        def found_all() -> dict[str, list[dict[str, Any]]] | None:
            found = {
                name: [e for e in json_lines(json_stack, name) if e.get("call_id") == the_id] for name in COMPONENTS
            }
            done = any("succeeded" in e["message"] for e in found["worker"])  # the worker's last line of the task
            sent = any(e["logger"] == "minimodal.dispatch" for name in senders for e in found[name])
            return found if found["api"] and done and sent else None

        return found_all

    found = wait_for(about(call_id, ("api",)), 30, f"{call_id} sent by the API, run by the worker", interval=0.2)
    created = [e for e in found["api"] if e["logger"] == "minimodal.api.access" and e["method"] == "POST"]
    assert created and created[0]["status"] == 201 and created[0]["path"].endswith("/calls")
    [sent] = [e for e in found["api"] if e["logger"] == "minimodal.dispatch"]
    assert sent["message"].startswith("sent mm.execute") and (sent["start"], sent["end"]) == (0, 1)
    assert not found["dispatcher"]
    assert any("succeeded" in e["message"] for e in found["worker"]), found["worker"]
    of_map = wait_for(about(map_id, ("dispatcher",)), 30, f"{map_id} sent by the dispatcher", interval=0.2)
    [first, *rest] = sorted(
        (e for name in ("api", "dispatcher") for e in of_map[name] if e["logger"] == "minimodal.dispatch"),
        key=lambda e: e["start"],
    )
    assert (first["component"], first["start"], first["end"]) == ("api", 0, 1)
    assert rest and {e["component"] for e in rest} == {"dispatcher"}

    everything = [e for entries in (*found.values(), *of_map.values()) for e in entries]
    assert {e["component"] for e in everything} == set(COMPONENTS)
    assert len({e["user_id"] for e in everything}) == 1, "the same user everywhere"
    for entries in (found, of_map):
        # A URL with only the call id names no function
        functions = {e.get("function_id") for e in (e for es in entries.values() for e in es)} - {None}
        assert len(functions) == 1 and functions.pop().startswith("fu-"), "the same function everywhere"
    senders = [e for es in (found, of_map) for e in es["api"] + es["dispatcher"] if e["logger"] == "minimodal.dispatch"]
    assert all("function_id" in e for e in senders + of_map["dispatcher"] + found["worker"] + created)
    assert all({"ts", "level", "logger", "message", "pid"} <= set(e) for e in everything)


def test_an_api_log_line_carries_no_ids_left_over_from_an_earlier_request_on_the_same_connection(
    json_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    token = use_stack(json_stack, request, monkeypatch)
    with basic.app.run():
        call_id = basic.square.spawn(2).object_id
    session = requests.Session()  # one connection: the API serves both requests on the same thread
    session.headers["Authorization"] = f"Bearer {token}"
    assert session.get(f"{json_stack.url}/v1/calls/{call_id}").status_code == 200
    assert session.get(f"{json_stack.url}/v1/me").status_code == 200
    session.close()

    def me_line() -> dict[str, Any] | None:
        lines = [e for e in json_lines(json_stack, "api") if e.get("path") == "/v1/me"]
        return lines[-1] if lines else None

    line = wait_for(me_line, 10, "the access line of /v1/me")
    assert "call_id" not in line and "user_id" in line
