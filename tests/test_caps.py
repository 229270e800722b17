"""Oversized generator items and log floods are capped with a clear truncation marker; the call goes on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

import minimodal
from tests.conftest import RedisServer, Stack, start_stack, use_stack, wait_for
from tests.functions import hardening

MARKER = "[minimodal: truncated]"


@pytest.fixture(scope="module")
def capped_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own with small caps (on Redis database 7)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINIMODAL_MAX_ITEM_SIZE", "100000")
        patch.setenv("MINIMODAL_MAX_LOG_LINE", "1000")
        patch.setenv("MINIMODAL_MAX_LOG_BYTES", "20000")
        stack = start_stack(redis_server, tmp_path_factory.mktemp("caps"), runtime="process", db=7)
    yield stack
    stack.stop()


@pytest.fixture
def capped_user(capped_stack: Stack, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_stack(capped_stack, request, monkeypatch)


def test_a_generator_item_over_the_cap_is_replaced_by_a_marker_and_the_stream_goes_on(capped_user: str) -> None:
    app = minimodal.App("caps")
    big_items = app.function(serialized=True, name="big_items")(hardening.big_items)
    with app.run():
        items = list(big_items.remote_gen([10, 200_000, 20]))
    assert items[0] == b"x" * 10 and items[2] == b"x" * 20
    assert isinstance(items[1], str) and items[1].startswith(MARKER)
    assert "generator item 1" in items[1] and "MINIMODAL_MAX_ITEM_SIZE" in items[1]


def test_a_log_flood_is_cut_with_a_marker_and_the_call_still_returns(capped_stack: Stack, capped_user: str) -> None:
    app = minimodal.App("caps")
    flood = app.function(serialized=True, name="flood")(hardening.flood)
    with app.run():
        call = flood.spawn(2000, 40)  # ~100 KB printed, over the 20 000-character budget
        assert call.get(timeout=60) == "flooded"
    headers = {"Authorization": f"Bearer {capped_user}"}

    def stored() -> list[str]:
        reply = requests.get(f"{capped_stack.url}/v1/calls/{call.object_id}/logs", headers=headers, timeout=10)
        return [entry["text"] for entry in reply.json()["logs"]]

    texts = wait_for(lambda: [t for t in stored() if "MINIMODAL_MAX_LOG_BYTES" in t] and stored(), 30, "the marker")
    assert sum(len(t) for t in texts) <= 20_000 + 1000 + 500  # the budget, one entry past it, and the marker
    assert texts[-1].startswith(MARKER) and "the rest of its output is dropped" in texts[-1]
    assert not any("z" * 2000 in t for t in texts)  # the long last line came after the budget ran out


def test_one_long_log_entry_is_cut_to_the_line_cap(capped_user: str, capped_stack: Stack) -> None:
    app = minimodal.App("caps")
    flood = app.function(serialized=True, name="flood")(hardening.flood)
    with app.run():
        call = flood.spawn(0, 0)
        assert call.get(timeout=60) == "flooded"
    headers = {"Authorization": f"Bearer {capped_user}"}

    def cut() -> list[str]:
        reply = requests.get(f"{capped_stack.url}/v1/calls/{call.object_id}/logs", headers=headers, timeout=10)
        return [e["text"] for e in reply.json()["logs"] if "MINIMODAL_MAX_LOG_LINE" in e["text"]]

    [entry] = wait_for(cut, 30, "the cut entry")
    assert entry.startswith("z" * 1000) and "z" * 1001 not in entry
    assert f"{MARKER} " in entry and "more characters of this entry dropped" in entry
