"""The program model in real containers: the module imports there, with what only the image has."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, Stack
from tests.functions import modelprog, py313

pytestmark = pytest.mark.docker


def test_an_imports_block_runs_in_the_container_for_a_package_only_the_image_has(
    docker_stack: Stack, docker_user: str
) -> None:
    with modelprog.app.run():
        assert modelprog.to_toml.remote({"a": 1}) == "a = 1\n"


def test_a_module_level_fastapi_app_behind_asgi_app_answers_over_http(docker_stack: Stack, docker_user: str) -> None:
    modelprog.app.deploy()
    reply = requests.get(modelprog.api.get_web_url() + "/square/7", timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"square": 49, "docker": True}


def test_a_function_with_no_network_calls_another_function(docker_stack: Stack, docker_user: str) -> None:
    with modelprog.app.run():
        value, interfaces = modelprog.offline.remote(4)
    assert value == 50
    assert interfaces == ["lo"]  # no network at all: the call went through the worker


def test_a_function_runs_on_python_3_13_from_a_3_11_client(docker_stack: Stack, docker_user: str) -> None:
    import sys

    assert sys.version_info[:2] == (3, 11)
    with py313.newer.run():
        version, reading = py313.on_313.remote(py313.Reading("t", 1.5))
    assert version == "3.13"
    assert reading == py313.Reading("T", 3.0)


def test_an_edit_takes_effect_on_the_next_run_with_no_image_build(
    docker_stack: Stack, docker_user: str, tmp_path: Path
) -> None:
    program = tmp_path / "edited_app.py"
    body = textwrap.dedent(
        """
        import minimodal

        image = minimodal.Image.debian_slim().pip_install("tomli-w==1.2.0")
        app = minimodal.App("edited-app", image=image)

        @app.function()
        def answer():
            return "ANSWER-{n}"

        @app.local_entrypoint()
        def main():
            print(answer.remote())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "minimodal", "run", str(program)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    program.write_text(body.replace("{n}", "1"))
    first = run()
    assert "ANSWER-1" in first.stdout, first.stdout + first.stderr
    program.write_text(body.replace("{n}", "2"))
    second = run()
    assert "ANSWER-2" in second.stdout, second.stdout + second.stderr
    assert "[build" not in second.stderr  # the image is unchanged: nothing is built, the code still changed
