"""The runner's frames (sdk/_frames.py) and the one retry loop of the SDK (sdk/_backoff.py)."""

from __future__ import annotations

import asyncio
import io

import pytest

from minimodal._backoff import Backoff, Retrying
from minimodal._frames import PREFIX, Kind, encode_frame, read_frame, take_frame, write_frame


def test_a_frame_reads_back_as_it_was_written_and_a_stream_ends_with_none() -> None:
    out = io.BytesIO()
    write_frame(out, Kind.CALL, {"call_id": "fc-1", "idx": 3}, b"\x00payload")
    write_frame(out, Kind.READY)
    inp = io.BytesIO(out.getvalue())
    assert read_frame(inp) == (Kind.CALL, {"call_id": "fc-1", "idx": 3}, b"\x00payload")
    assert read_frame(inp) == (Kind.READY, {}, b"")
    assert read_frame(inp) is None


def test_a_buffer_gives_a_frame_only_once_it_holds_all_of_it() -> None:
    data = encode_frame(Kind.LOG, {"stream": "stdout"}, b"hello\n")
    buffer = bytearray()
    arrivals = iter([data[:3], data[3:11], data[11:]])

    def fill(n: int) -> bool:
        while len(buffer) < n:
            buffer.extend(next(arrivals))
        return True

    assert take_frame(buffer, fill) == (Kind.LOG, {"stream": "stdout"}, b"hello\n")
    assert buffer == bytearray()


def test_every_kind_is_one_byte_and_an_unknown_one_is_refused() -> None:
    assert all(len(kind.value) == 1 for kind in Kind)
    assert len({kind.value for kind in Kind}) == len(Kind)
    bad = io.BytesIO(PREFIX.pack(b"Z", 2, 0) + b"{}")
    with pytest.raises(ValueError):
        read_frame(bad)


def test_backoff_waits_grow_to_their_cap_and_stop_after_the_tries() -> None:
    backoff = Backoff(0.001, factor=10, most=1.0, tries=5)
    assert [backoff.next_wait() for _ in range(5)] == [0.001, 0.01, 0.1, 1.0, None]


def test_retrying_runs_the_block_again_after_a_forgiven_error_and_lets_others_through() -> None:
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("not yet")
        return "done"

    def forgive(exc: Exception) -> float | None:
        return 0.0 if isinstance(exc, ConnectionError) else None

    def call() -> str:
        for attempt in Retrying(forgive):
            with attempt:
                return flaky()
        raise AssertionError("the loop ended without a result")

    assert call() == "done" and len(tries) == 3

    async def acall() -> str:
        async for attempt in Retrying(forgive):
            with attempt:
                return flaky()
        raise AssertionError("the loop ended without a result")

    tries.clear()
    assert asyncio.run(acall()) == "done" and len(tries) == 3
    with pytest.raises(KeyError):
        for attempt in Retrying(forgive):
            with attempt:
                raise KeyError("not forgiven")
