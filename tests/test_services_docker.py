"""A deployed class and web endpoints running in real containers (the Docker runtime)."""

from __future__ import annotations

import pytest
import requests

import minimodal
from tests.conftest import Stack
from tests.functions import services

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


def test_the_enter_hook_runs_once_over_20_calls_in_one_container(docker_stack: Stack, docker_user: str) -> None:
    services.app.deploy()
    loader = minimodal.Cls.from_name("tests-services", "Loader")(scale=3)
    results = [loader.predict.remote(i) for i in range(10)] + list(loader.predict.map(range(10, 20)))
    assert [r[0] for r in results] == [3 * i for i in range(20)]
    assert {r[1] for r in results} == {1}, "enter ran more than once"
    assert len({r[2] for r in results}) == 1 and all(r[3] for r in results), "not one container"


def test_web_endpoints_run_in_their_containers(docker_stack: Stack, docker_user: str) -> None:
    services.app.deploy()
    reply = requests.get(services.plain_wsgi.get_web_url() + "/a/b?x=1", timeout=120)
    assert reply.status_code == 202
    assert reply.json() == {"path": "/a/b", "query": "x=1", "docker": True}
    reply = requests.post(services.plain_asgi.get_web_url(), data=b"abc", timeout=120)
    assert reply.status_code == 200 and reply.text == "got abc in a container"
