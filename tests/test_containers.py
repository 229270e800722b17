"""Functions in containers built from their Image: builds, cache, limits, warm pools, cleanup."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import minimodal
from minimodal._client import Client
from minimodal.exception import FunctionTimeoutError, ImageBuildError, RemoteError
from tests.conftest import Stack, docker_engine, wait_for
from tests.functions import images as fns

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    client = docker_engine()
    yield client
    client.close()


@pytest.fixture
def built(engine: Any) -> Iterator[list[str]]:
    """Identities of layers a test built; their tags are removed afterwards so runs do not pile up images."""
    identities: list[str] = []
    yield identities
    for identity in reversed(identities):
        tag = f"minimodal/image:{identity}"
        try:
            # The worker removes a stopped app's containers just after the run ends: give it a moment.
            wait_for(lambda: not engine.containers.list(all=True, filters={"ancestor": tag}), 30, "", interval=0.5)  # noqa: B023
            engine.images.remove(tag, noprune=False)
        except Exception:  # noqa: BLE001 - in use by a later layer or already gone (or still running after 30 s)
            pass


def fresh() -> minimodal.Image:
    """A default image with a layer no other run has: its first deploy really builds."""
    return minimodal.Image.debian_slim().env({"MM_TEST_NONCE": uuid.uuid4().hex})


def deploy(fn: Callable[..., Any], image: minimodal.Image, **options: Any) -> tuple[minimodal.App, Any]:
    app = minimodal.App("containers")
    return app, app.function(image=image, serialized=True, name=fn.__name__, **options)(fn)


def image_record(stack: Stack, token: str, image: minimodal.Image) -> dict[str, Any]:
    """What POST /v1/images answers for this spec (registers it; builds only if it is new)."""
    reply = requests.post(
        f"{stack.url}/v1/images", json=image.spec(), headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert reply.status_code in (200, 201), reply.text
    return reply.json()


def states(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(event["op"], event["state"]) for event in record["events"]]


def containers_of(engine: Any, function: Any) -> list[Any]:
    """The function's running containers, by name: one started blank has no owner labels, only the name."""
    found = engine.containers.list(filters={"name": f"-{function.object_id}-"})
    return [c for c in found if re.fullmatch(rf"mm-u\d+-{re.escape(function.object_id)}-[0-9a-f]{{12}}", c.name)]


def test_a_pip_installed_package_imports_in_a_container(docker_stack: Stack, docker_user: str) -> None:
    app, f = deploy(fns.six_version, minimodal.Image.debian_slim().pip_install("six==1.16.0"))
    _, who = deploy(fns.whoami, minimodal.Image.debian_slim())
    who_app = who._app
    with app.run():
        assert f.remote() == "1.16.0"
    with who_app.run():
        assert who.remote() == (True, 1000, "1")


def test_import_modal_in_a_container_is_minimodal(docker_stack: Stack, docker_user: str) -> None:
    app, f = deploy(fns.modal_name, minimodal.Image.debian_slim())
    with app.run():
        assert f.remote() == "minimodal"


def test_a_uv_pip_installed_package_imports_in_a_container_from_a_requirements_file_too(
    docker_stack: Stack, docker_user: str, built: list[str], tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    image = fresh().uv_pip_install(requirements=[requirements])
    app, f = deploy(fns.six_version, image, scaledown_window=2)  # its containers go soon: `built` removes its images
    with app.run():
        assert f.remote() == "1.16.0"
    record = image_record(docker_stack, docker_user, image)
    built += [e["identity"] for e in record["events"] if e["state"] == "built"]
    assert states(record)[-1] == ("uv_pip_install", "built")
    upgraded = image.uv_pip_install("six==1.17.0")
    app2, g = deploy(fns.six_version, upgraded, scaledown_window=2)
    with app2.run():
        assert g.remote() == "1.17.0"  # on top of the first: the uv already in the image upgrades six in place
    built += [e["identity"] for e in image_record(docker_stack, docker_user, upgraded)["events"][-1:]]


def test_a_second_deploy_of_an_unchanged_image_builds_nothing(
    docker_stack: Stack, docker_user: str, built: list[str]
) -> None:
    image = fresh()
    app, f = deploy(fns.version, image)
    with app.run():
        assert f.remote() == "one"
    first = image_record(docker_stack, docker_user, image)
    built += [e["identity"] for e in first["events"] if e["state"] == "built"]
    assert states(first) == [("minimodal_runtime", "cached"), ("env", "built")]
    with app.run():
        assert f.remote() == "one"
    again = image_record(docker_stack, docker_user, image)
    assert again["status"] == "ready"
    assert again["built_at"] == first["built_at"]  # no second build happened


def test_changing_only_the_function_body_rebuilds_nothing(
    docker_stack: Stack, docker_user: str, built: list[str]
) -> None:
    image = fresh()
    app, f = deploy(fns.version, image)
    with app.run():
        assert f.remote() == "one"
    record = image_record(docker_stack, docker_user, image)
    built += [e["identity"] for e in record["events"] if e["state"] == "built"]
    app2, g = deploy(fns.version_two, image)
    with app2.run():
        assert g.remote() == "two"
    assert image_record(docker_stack, docker_user, image)["built_at"] == record["built_at"]


def test_changing_a_pip_package_rebuilds_from_that_layer(
    docker_stack: Stack, docker_user: str, built: list[str]
) -> None:
    base = fresh().run_commands("echo base > /tmp/base")
    app, f = deploy(fns.six_version, base.pip_install("six==1.16.0"))
    with app.run():
        assert f.remote() == "1.16.0"
    first = image_record(docker_stack, docker_user, base.pip_install("six==1.16.0"))
    app2, g = deploy(fns.six_version, base.pip_install("six==1.17.0"))
    with app2.run():
        assert g.remote() == "1.17.0"
    second = image_record(docker_stack, docker_user, base.pip_install("six==1.17.0"))
    built += [e["identity"] for r in (first, second) for e in r["events"] if e["state"] == "built"]
    assert states(second) == [
        ("minimodal_runtime", "cached"),
        ("env", "cached"),
        ("run_commands", "cached"),
        ("pip_install", "built"),
    ]


def test_changing_an_added_files_content_changes_the_image(
    docker_stack: Stack, docker_user: str, tmp_path: Path, built: list[str]
) -> None:
    local = tmp_path / "data.txt"
    base = fresh()
    local.write_text("first")
    one = base.add_local_file(local, "/opt/data.txt")
    local.write_text("second")
    two = base.add_local_file(local, "/opt/data.txt")
    assert one.digest() != two.digest()
    for image, expected in ((one, "first"), (two, "second")):
        app, f = deploy(fns.read, image)
        with app.run():
            assert f.remote("/opt/data.txt") == expected
        record = image_record(docker_stack, docker_user, image)
        built += [e["identity"] for e in record["events"] if e["state"] == "built"]
    assert states(record) == [("minimodal_runtime", "cached"), ("env", "cached"), ("add_local_file", "built")]


def test_a_failing_build_fails_the_deploy_with_the_log_tail(docker_stack: Stack, docker_user: str) -> None:
    app, f = deploy(fns.version, minimodal.Image.debian_slim().run_commands("echo about-to-fail && exit 3"))
    with pytest.raises(ImageBuildError, match="about-to-fail"):
        with app.run():
            pytest.fail("the app must not start")
    assert f.object_id is None  # no function was created, so no call can be queued against it


def test_the_memory_limit_ends_a_call_with_an_out_of_memory_error(docker_stack: Stack, docker_user: str) -> None:
    app, f = deploy(fns.allocate, minimodal.Image.debian_slim(), memory=64)
    with app.run():
        with pytest.raises(RemoteError, match="memory.*64 MiB"):
            f.remote(512)
        assert f.remote(8) == 8  # the next call gets a fresh container


def test_the_timeout_ends_a_call_in_a_container(docker_stack: Stack, docker_user: str) -> None:
    app, f = deploy(fns.sleep, minimodal.Image.debian_slim(), timeout=2)
    with app.run():
        with pytest.raises(FunctionTimeoutError, match="timeout of 2 s"):
            f.remote(30)
        started, ended = f.remote(0)
        assert ended >= started


def test_an_idle_pool_scales_to_zero_and_back_up(docker_stack: Stack, docker_user: str, engine: Any) -> None:
    app, f = deploy(fns.whoami, minimodal.Image.debian_slim(), scaledown_window=2)
    with app.run():
        assert f.remote()[0] is True
        wait_for(lambda: len(containers_of(engine, f)) == 1, 10, "its container", interval=0.2)
        [container] = containers_of(engine, f)
        assert container.labels["minimodal"] == "1"
        assert container.labels["minimodal.home"] == str(docker_stack.home)
        if not container.labels["minimodal.key"].startswith("blank:"):  # created for it, not bound from a blank
            assert container.labels["minimodal.app"] == app.app_id
            assert container.labels["minimodal.function"] == "whoami"
        # Whichever it was, the worker knows whose it is.
        client = Client.from_config()
        wait_for(lambda: client.request("GET", "/v1/containers")["containers"], 10, "the worker's list", interval=0.2)
        [listed] = client.request("GET", "/v1/containers")["containers"]
        assert (listed["app"], listed["function"]) == (app.app_id, "whoami")
        wait_for(lambda: containers_of(engine, f) == [], 30, "the idle container to stop", interval=0.5)
        assert f.remote()[0] is True
        wait_for(lambda: len(containers_of(engine, f)) == 1, 10, "its new container", interval=0.2)


def test_min_containers_start_before_any_call_and_stop_with_the_app(
    docker_stack: Stack, docker_user: str, engine: Any
) -> None:
    app, f = deploy(fns.whoami, minimodal.Image.debian_slim(), min_containers=2, scaledown_window=2)
    with app.run():
        wait_for(lambda: len(containers_of(engine, f)) == 2, 60, "two warm containers", interval=0.5)
        assert f.remote()[0] is True
    wait_for(lambda: containers_of(engine, f) == [], 60, "the stopped app's containers to go", interval=0.5)


def test_max_containers_caps_how_many_calls_run_at_once(docker_stack: Stack, docker_user: str) -> None:
    app, f = deploy(fns.sleep, minimodal.Image.debian_slim(), max_containers=1)
    with app.run():
        spans = sorted(f.map([0.5] * 4))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.01, "two calls overlapped despite max_containers=1"


def test_a_custom_image_on_a_stack_without_docker_fails_the_deploy_clearly(user: str) -> None:
    app, f = deploy(fns.six_version, minimodal.Image.debian_slim().pip_install("six"))
    with pytest.raises(ImageBuildError, match="no worker with a Docker engine"):
        with app.run():
            pytest.fail("the app must not start")


def test_every_builder_adds_what_it_says(
    docker_stack: Stack, docker_user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: list[str]
) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    (tree / "skip.log").write_text("ignored")
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures" / "localpkg"))
    image = (
        fresh()
        .apt_install("jq")
        .env({"MM_COLOR": "blue"})
        .workdir("/opt/work")
        .add_local_dir(tree, "/opt/tree", ignore=["*.log"])
        .add_local_python_source("mmlocalpkg")
        .run_function(fns.write_marker)
    )
    app, f = deploy(fns.inspect_image, image)
    with app.run():
        assert f.remote() == {
            "cwd": "/opt/work",
            "jq": True,
            "dir": ["a.txt", "sub"],
            "package": "hello from a local package",
            "built_by_function": "ran at build time",
            "env": "blue",
        }
    built += [e["identity"] for e in image_record(docker_stack, docker_user, image)["events"] if e["state"] == "built"]


def test_from_dockerfile_and_from_registry_build_on_local_images(docker_stack: Stack, docker_user: str) -> None:
    image = minimodal.Image.from_dockerfile(Path(__file__).parent / "fixtures" / "dockerfile" / "Dockerfile")
    app, f = deploy(fns.read, image)
    with app.run():
        assert f.remote("/opt/marker.txt") == "from a Dockerfile\n"
    app, g = deploy(fns.whoami, minimodal.Image.from_registry("minimodal/base:bookworm"))
    with app.run():
        assert g.remote()[0] is True


def test_a_function_pickled_by_value_on_another_python_fails_clearly(docker_stack: Stack, docker_user: str) -> None:
    # Imported by name a function runs on any Python (tests/test_program_model_docker.py); by value, only on
    # the worker's own major.minor: the runner refuses it with a message that says so.
    app = minimodal.App(f"by-value-{uuid.uuid4().hex[:6]}", image=minimodal.Image.debian_slim(python_version="3.13"))

    @app.function(serialized=True)
    def closure() -> int:
        return 1

    with app.run():
        with pytest.raises(RemoteError, match="only load in the same major.minor"):
            closure.remote()


def test_builders_return_new_images_and_leave_the_original_alone() -> None:
    base = minimodal.Image.debian_slim()
    derived = base.pip_install("six").env({"A": "1"})
    assert base.layers == ({"op": "debian_slim", "python": base.python_version},)
    assert len(derived.layers) == 3
    assert base.digest() != derived.digest()


def test_image_imports_tolerates_missing_packages_locally_only() -> None:
    with minimodal.Image.debian_slim().imports():
        import package_that_is_not_installed_here  # noqa: F401


def test_minimodal_run_streams_the_build_log(
    docker_stack: Stack, docker_user: str, tmp_path: Path, built: list[str]
) -> None:
    import subprocess
    import sys

    nonce = uuid.uuid4().hex
    app_file = tmp_path / "built.py"
    app_file.write_text(
        "import minimodal\n"
        "app = minimodal.App('built')\n"
        f"image = minimodal.Image.debian_slim().run_commands('echo building-{nonce}')\n"
        "@app.function(image=image)\n"
        "def f():\n"
        "    return 'ok'\n"
    )
    env = {**docker_stack.env, "MINIMODAL_TOKEN": docker_user}
    result = subprocess.run(
        [sys.executable, "-m", "minimodal", "run", str(app_file)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert f"building-{nonce}" in result.stderr
    assert "[build im-" in result.stderr
    image = minimodal.Image.debian_slim().run_commands(f"echo building-{nonce}")
    built += [e["identity"] for e in image_record(docker_stack, docker_user, image)["events"] if e["state"] == "built"]
