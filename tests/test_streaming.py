"""Generators, live logs and pushed outputs: what the client receives, and when."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time

import pytest
import requests

import minimodal
from minimodal import protocol
from minimodal._client import Client
from minimodal._stream import CallEvents
from minimodal.exception import AuthError, InvalidError
from mm_app import keyspace
from tests.conftest import ROOT, Stack
from tests.functions import basic


def test_remote_gen_yields_every_item_then_ends(user: str) -> None:
    with basic.app.run():
        assert list(basic.countdown.remote_gen(5)) == [0, 1, 2, 3, 4]
        assert list(basic.countdown.remote_gen(0)) == []
        assert list(basic.async_countdown.remote_gen(3)) == [0, 1, 2]


def test_the_first_item_arrives_long_before_the_generator_ends(user: str) -> None:
    with basic.app.run():
        fc = basic.countdown.spawn(5, 0.5)
        stream = fc.stream()
        assert next(stream) == 0
        received_first = time.time()
        assert list(stream) == [1, 2, 3, 4]
        ended_at = float(fc._envelope(0, timeout=30)[protocol.OUT_ENDED_AT])
    assert ended_at - received_first > 1.5


def test_an_exception_in_a_generator_arrives_after_the_items_it_yielded(user: str) -> None:
    received = []
    with basic.app.run():
        with pytest.raises(basic.CustomError, match="failed after 3"):
            for item in basic.fail_after.remote_gen(3):
                received.append(item)
    assert received == [0, 1, 2]


def test_remote_on_a_generator_function_is_a_clear_error(user: str) -> None:
    with basic.app.run():
        with pytest.raises(InvalidError, match="remote_gen"):
            basic.countdown.remote(3)
        with pytest.raises(InvalidError, match="not a generator"):
            list(basic.square.remote_gen(3))


def test_a_client_that_disconnects_resumes_and_gets_every_item_once_in_order(stack: Stack, user: str) -> None:
    with basic.app.run():
        fc = basic.countdown.spawn(5, 0.3)
        events = CallEvents(Client.from_config(), fc.object_id, ("items",))
        items: list[int] = []
        while len(items) < 2:
            items += [e["n"] for e in events.next() if not e.get("done")]
        assert events.transport == "websocket"
        events.drop()  # the connection goes away mid-stream
        while len(items) < 5:
            items += [e["n"] for e in events.next() if not e.get("done")]
        events.close()
        assert items == [0, 1, 2, 3, 4]
        # A new client that starts from a cursor gets only what came after it.
        late = CallEvents(Client.from_config(), fc.object_id, ("items",), cursors={"items": events.cursors["items"]})
        rest = late.next(timeout=5)
        late.close()
        assert [(e.get("done"), e.get("count")) for e in rest] == [(1, 5)]  # only the end marker is left


def test_long_poll_delivers_the_same_events_as_the_websocket(user: str) -> None:
    with basic.app.run():
        fc = basic.countdown.spawn(3)
        assert list(fc.stream()) == [0, 1, 2]
        by_ws = CallEvents(Client.from_config(), fc.object_id, ("items", "outputs"))
        by_poll = CallEvents(Client.from_config(), fc.object_id, ("items", "outputs"), websocket=False)
        assert by_ws.next() == by_poll.next()
        by_ws.close()


def test_the_websocket_wants_the_same_bearer_token(stack: Stack, user: str) -> None:
    with basic.app.run():
        fc = basic.countdown.spawn(1)
        with pytest.raises(AuthError):
            CallEvents(Client(stack.url, "mm_wrong"), fc.object_id).next()
    other = stack.new_user("stream-intruder")
    with pytest.raises(minimodal.exception.NotFoundError):
        CallEvents(Client(stack.url, other), fc.object_id).next()


def test_generator_items_are_kept_for_the_stream_ttl(stack: Stack, user: str) -> None:
    with basic.app.run():
        fc = basic.countdown.spawn(2)
        assert list(fc.stream()) == [0, 1]
    ttl = stack.redis.client.ttl(keyspace.items_key(fc.object_id))
    assert 0 < ttl <= 3600


class _Recorder(io.TextIOBase):
    def __init__(self) -> None:
        self.writes: list[tuple[float, str]] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes.append((time.time(), text))
        return len(text)

    def isatty(self) -> bool:
        return False


def test_printed_lines_reach_the_client_while_the_function_runs(user: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = _Recorder(), _Recorder()
    with basic.app.run(), minimodal.enable_output():
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        assert basic.chatty.remote(4, 0.3) == "done"
        returned = time.time()
        monkeypatch.undo()
    lines = "".join(text for _, text in out.writes)
    assert lines == "line 0\nline 1\nline 2\nline 3\n"
    assert returned - out.writes[0][0] > 0.6  # the first line came while the call still had ~0.9 s to run
    assert "straight to fd 2" in "".join(text for _, text in err.writes)


def test_logs_are_stored_for_the_call_and_its_app(stack: Stack, user: str) -> None:
    with basic.app.run():
        fc = basic.chatty.spawn(2, 0)
        assert fc.get() == "done"
        app_id = basic.app.app_id
    env = {**stack.env, "MINIMODAL_TOKEN": user}
    call_logs = subprocess.run(
        [sys.executable, "-m", "minimodal", "logs", fc.object_id],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert call_logs.stdout == "line 0\nline 1\n"
    assert call_logs.stderr == "straight to fd 2\n"
    app_logs = subprocess.run(
        [sys.executable, "-m", "minimodal", "app", "logs", app_id],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "line 1\n" in app_logs.stdout
    other = stack.new_user("log-intruder")
    reply = requests.get(
        f"{stack.url}/v1/calls/{fc.object_id}/logs", headers={"Authorization": f"Bearer {other}"}, timeout=10
    )
    assert reply.status_code == 404


def test_map_streams_outputs_in_completion_order(user: str) -> None:
    sleeps = [0.05 * ((i * 7) % 10) for i in range(20)]
    with basic.app.run():
        results = list(basic.sleep_and_tag.map(sleeps, order_outputs=False))
    assert sorted(s for s, _ in results) == sorted(sleeps)
    ended = [t for _, t in results]
    # Each output came as its input completed: two inputs ending within a few ms on two runners may
    # reach the stream in either order on a busy machine, so a later one may precede by up to 0.1 s.
    assert all(a <= b + 0.1 for a, b in zip(ended, ended[1:], strict=False))
    assert [s for s, _ in results] != sleeps  # and not in input order


def test_async_forms_work_inside_asyncio_run(user: str) -> None:
    async def main() -> tuple:  # type: ignore[type-arg]
        squared = await basic.square.remote.aio(3)
        mapped = [x async for x in basic.square.map.aio(range(4))]
        generated = [x async for x in basic.countdown.remote_gen.aio(3)]
        fc = await basic.square.spawn.aio(5)
        got = await fc.get.aio()
        streamed = [x async for x in (await basic.countdown.spawn.aio(2)).stream.aio()]
        coroutine = await basic.async_square.remote.aio(4)
        return squared, mapped, generated, got, streamed, coroutine

    with basic.app.run():
        assert asyncio.run(main()) == (9, [0, 1, 4, 9], [0, 1, 2], 25, [0, 1], 16)
