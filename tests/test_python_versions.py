"""Image.debian_slim(python_version=): the versions the cluster's base images give, and none other."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

import minimodal
from minimodal.exception import InvalidError
from tests.conftest import ROOT, Stack, docker_engine, missing, wait_for
from tests.functions import images as fns
from workers.images import BuildError, ImageBuilder

CLIENT_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
OTHER_PYTHON = "3.13" if CLIENT_PYTHON != "3.13" else "3.11"  # the other version docker/base/build.sh builds


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    client = docker_engine()
    try:
        client.images.get(f"python:{OTHER_PYTHON}-slim")
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
        client.close()
        missing(f"the image python:{OTHER_PYTHON}-slim is missing (make docker-base builds it)")
    yield client
    client.close()


def deploy(image: minimodal.Image) -> minimodal.App:
    app = minimodal.App("python-versions")
    app.function(image=image, serialized=True, name="whoami")(fns.whoami)
    return app


def test_python_version_must_be_a_major_minor_string() -> None:
    for bad in (3.13, "3", "3.13.1", "python3.13", ""):
        with pytest.raises(InvalidError, match="major.minor string"):
            minimodal.Image.debian_slim(python_version=bad)  # type: ignore[arg-type]
    assert minimodal.Image.debian_slim(python_version="3.13").spec() == {
        "layers": [{"op": "debian_slim", "python": "3.13"}],
        "python": "3.13",
    }


@pytest.mark.docker
def test_a_worker_reports_the_python_versions_its_engine_can_build(engine: Any, docker_stack: Stack) -> None:
    workers = docker_stack.workers()
    assert workers and all({CLIENT_PYTHON, OTHER_PYTHON} <= set(w["pythons"]) for w in workers), workers
    assert all(w["python"] == CLIENT_PYTHON for w in workers)  # its runner processes' own


@pytest.mark.docker
def test_an_image_of_another_python_builds_from_this_client(engine: Any, docker_stack: Stack, docker_user: str) -> None:
    nonce = uuid.uuid4().hex
    image = minimodal.Image.debian_slim(python_version=OTHER_PYTHON).run_commands(
        f"echo {nonce} >/dev/null && python --version > /version.txt",
        "python -c 'import cloudpickle; print(cloudpickle.__version__)' > /cloudpickle.txt",
    )
    with deploy(image).run():
        pass
    reply = requests.post(
        f"{docker_stack.url}/v1/images",
        json=image.spec(),
        headers={"Authorization": f"Bearer {docker_user}"},
        timeout=30,
    )
    record = reply.json()
    assert record["status"] == "ready", record
    try:
        out = engine.containers.run(
            record["tag"], ["cat", "/version.txt", "/cloudpickle.txt"], remove=True, network_mode="none"
        )
        version, cloudpickle_version = out.decode().split()[1:]
        assert version.rsplit(".", 1)[0] == OTHER_PYTHON
        import cloudpickle

        assert cloudpickle_version == cloudpickle.__version__  # the workers' version, which the runner needs
    finally:
        for event in reversed(record["events"]):
            if event["state"] == "built":  # so that runs do not pile up images
                with contextlib.suppress(Exception):  # in use by a later layer, or the engine is slow
                    engine.images.remove(f"minimodal/image:{event['identity']}", noprune=False)


@pytest.mark.docker
@pytest.mark.parametrize("version", ["3.9", "3.12"])
def test_a_python_version_no_base_image_gives_fails_the_deploy_naming_the_available_ones(
    engine: Any, docker_stack: Stack, docker_user: str, version: str
) -> None:
    app = deploy(minimodal.Image.debian_slim(python_version=version))
    available = ", ".join(sorted({CLIENT_PYTHON, OTHER_PYTHON}, key=lambda v: int(v.split(".")[1])))
    with pytest.raises(InvalidError, match=rf"python_version='{version}'.*builds Python {available}\b"):
        with app.run():
            pytest.fail("the app must not start")


@pytest.mark.docker
def test_the_builder_names_the_versions_its_engine_has_when_a_base_is_missing(engine: Any) -> None:
    builder = ImageBuilder(engine, cloudpickle_version="0")
    spec = {"layers": [{"op": "debian_slim", "python": "3.12"}], "python": "3.12"}
    with pytest.raises(BuildError, match=rf"no python:3.12-slim .* can build are .*{OTHER_PYTHON}"):
        builder.build(spec, lambda sha: b"", lambda line: None)


def test_without_docker_another_python_than_the_runners_fails_the_deploy(stack: Stack, user: str) -> None:
    wait_for(lambda: all("python" in w for w in stack.workers()), 10, "the worker to report its Python")
    app = deploy(minimodal.Image.debian_slim(python_version=OTHER_PYTHON))
    with pytest.raises(InvalidError, match=rf"no worker has a Docker engine.*Python {CLIENT_PYTHON}\b"):
        with app.run():
            pytest.fail("the app must not start")


@pytest.mark.docker
def test_the_base_image_script_builds_nothing_when_the_images_exist(engine: Any) -> None:
    if os.geteuid() != 0:
        missing("docker/base/build.sh runs as root")
    script = ROOT / "docker" / "base" / "build.sh"
    first = subprocess.run([str(script)], capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    for image in ("minimodal/base:bookworm", "minimodal/base:trixie"):
        assert f"{image} exists already with these versions: nothing to build" in second.stderr
    assert "nothing built: every base image exists already (Python 3.11 3.13)" in second.stderr
    assert "debootstrap" not in second.stderr.replace("no debootstrap", "")


def test_the_base_image_script_refuses_a_python_no_debian_suite_gives() -> None:
    if os.geteuid() != 0:
        missing("docker/base/build.sh runs as root")
    script = ROOT / "docker" / "base" / "build.sh"
    run = subprocess.run(
        [str(script)], env={**os.environ, "MINIMODAL_PYTHON_VERSION": "3.12"}, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert "MINIMODAL_PYTHON_VERSION=3.12: no Debian suite here gives it; give one of 3.11 3.13" in run.stderr
