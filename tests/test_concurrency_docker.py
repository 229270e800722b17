"""@minimodal.concurrent and @minimodal.batched in real containers (the Docker runtime)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Stack
from tests.functions import inputs_docker
from tests.test_concurrency import _most_at_once

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


def test_concurrent_and_batched_inputs_in_one_container(docker_stack: Stack, docker_user: str) -> None:
    with inputs_docker.app.run():
        with ThreadPoolExecutor(8) as threads:
            spans = list(threads.map(inputs_docker.sleepy.remote, range(8)))
        results = list(inputs_docker.double.map(range(10)))
    assert len({s["host"] for s in spans}) == 1, "the inputs ran in more than one container"
    assert 2 <= _most_at_once(spans) <= 4
    assert [r[0] for r in results] == [2 * i for i in range(10)]
    assert all(r[2] for r in results), "not in a container"
    batches = {tuple(r[1]) for r in results}
    assert all(len(b) <= 4 for b in batches) and sorted(x for b in batches for x in b) == list(range(10))
