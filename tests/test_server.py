"""The API runs under gunicorn: several processes, graceful SIGTERM, JSON errors from the server itself."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import PYTHON, ROOT, Stack, free_port, stop_process, wait_for
from tests.functions import basic


def _health(url: str) -> requests.Response:
    return requests.get(url + "/health", headers={"Connection": "close"}, timeout=10)


def test_the_api_answers_from_more_than_one_process_and_not_from_werkzeug(stack: Stack) -> None:
    seen: set[int] = set()

    def two_pids() -> bool:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: _health(stack.url), range(32)))
        for reply in replies:
            assert reply.ok
            assert "werkzeug" not in reply.headers["Server"].lower()
            assert "gunicorn" in reply.headers["Server"].lower()
            seen.add(reply.json()["pid"])
        return len(seen) >= 2

    wait_for(two_pids, 60, "replies from two API processes", interval=0)
    assert stack.processes["api"].pid not in seen, "the master only supervises; its workers answer"


@pytest.fixture
def second_api(stack: Stack) -> Iterator[tuple[subprocess.Popen, str]]:
    """Another API (gunicorn master and its workers) on the stack's Redis and database, on its own port."""
    port = free_port()
    with open(stack.home / f"api-{port}.log", "wb") as log:
        api = subprocess.Popen(
            [PYTHON, "-m", "mm_app", "api", "--port", str(port)],
            env={**stack.env, "MINIMODAL_API_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ok(url), 60, "the second API to answer")
        yield api, url
    finally:
        stop_process(api)


def _workers(master: int) -> set[int]:
    return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


def test_sighup_replaces_every_api_process_while_requests_keep_being_answered(
    second_api: tuple[subprocess.Popen, str],
) -> None:
    api, url = second_api
    before = wait_for(lambda: len(w := _workers(api.pid)) == 2 and w, 30, "two API worker processes")
    api.send_signal(signal.SIGHUP)
    statuses = []

    def replaced() -> bool:
        statuses.append(requests.get(url + "/health", timeout=10).status_code)  # kept-alive or new: answered
        now = _workers(api.pid)
        return len(now) == 2 and not now & before

    wait_for(replaced, 60, "new API processes in place of the old ones")
    assert set(statuses) == {200}
    assert api.poll() is None  # the master stays; only its workers were replaced
    assert {_health(url).json()["pid"] for _ in range(20)} <= _workers(api.pid)


def test_sigterm_lets_an_in_flight_long_poll_finish_and_the_api_exit_cleanly(
    second_api: tuple[subprocess.Popen, str], user: str
) -> None:
    # Given a second API on the stack's Redis and database, and a long-poll in flight on it.
    api, url = second_api
    port = int(url.rsplit(":", 1)[1])
    with basic.app.run():
        call = basic.sleep.spawn(8)  # longer than the long-poll: it answers empty
        reply: dict[str, requests.Response] = {}
        poll = threading.Thread(
            target=lambda: reply.update(
                r=requests.get(
                    f"{url}/v1/calls/{call.object_id}/outputs?timeout=3",
                    headers={"Authorization": f"Bearer {user}"},
                    timeout=30,
                )
            )
        )
        poll.start()
        wait_for(lambda: "r" in reply or _in_flight(api.pid, port), 10, "the long-poll to reach a worker")
        # When the API is told to stop while the long-poll waits...
        api.send_signal(signal.SIGTERM)
        poll.join(30)
    # ...then the long-poll got its (empty) answer, and the server exited by itself, cleanly.
    assert reply["r"].status_code == 200, reply["r"].text
    assert reply["r"].json()["outputs"] == []
    assert api.wait(timeout=40) == 0
    assert not _ok(url)


def _ok(url: str) -> bool:
    try:
        return _health(url).ok
    except requests.RequestException:
        return False


def _in_flight(master: int, port: int) -> bool:
    """Whether a worker of ``master`` has accepted a client's connection to ``port`` (the long-poll)."""
    query = ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"]
    out = subprocess.run(query, capture_output=True, text=True).stdout
    children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return any(f"pid={child}," in out for child in children)
