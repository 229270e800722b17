"""With only the SDK installed (`pip install minimodal`, no `[server]` extra), server commands say what to install."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sdk_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the project installed without extras: cloudpickle, requests, httpx and rich only."""
    env = tmp_path_factory.mktemp("sdk-only") / "venv"
    venv.create(env, with_pip=True)
    subprocess.run(
        [env / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return env


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "argv",
    [
        ["bin/minimodal", "up", "--detach"],
        ["bin/python", "-m", "mm_app", "worker"],
        ["bin/python", "-m", "mm_app", "api"],
    ],
)
def test_a_server_command_without_the_server_extra_says_in_one_line_what_to_install(
    sdk_only: Path, argv: list[str], tmp_path: Path
) -> None:
    probe = subprocess.run(
        [sdk_only / "bin/python", "-c", "import importlib.util as u; print(u.find_spec('flask') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "True"  # the venv really lacks the server
    done = subprocess.run(
        [str(sdk_only / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{sdk_only / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "MINIMODAL_HOME": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'minimodal[server]'" in lines[0] and "flask" in lines[0]


def test_the_sdk_still_imports_there(sdk_only: Path) -> None:
    done = subprocess.run(
        [sdk_only / "bin/python", "-c", "import minimodal; print(minimodal.App('x').name)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "x", done.stderr


def test_a_normal_install_carries_the_pth_file_that_makes_modal_minimodal_only_when_asked(
    sdk_only: Path, tmp_path: Path
) -> None:
    probe = [sdk_only / "bin/python", "-c", "import modal, minimodal; print(modal is minimodal)"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    asked = subprocess.run(probe, env={**env, "MINIMODAL_AS_MODAL": "1"}, capture_output=True, text=True, check=False)
    assert asked.returncode == 0 and asked.stdout.strip() == "True", asked.stderr
    plain = subprocess.run(probe, env=env, capture_output=True, text=True, check=False)
    assert plain.returncode == 1 and "No module named 'modal'" in plain.stderr
    assert "minimodal_as_modal.pth" in {p.name for p in (sdk_only / "lib").glob("python3*/site-packages/*.pth")}


def test_a_normal_install_carries_py_typed_so_type_checkers_read_the_sdks_annotations(sdk_only: Path) -> None:
    packages = list((sdk_only / "lib").glob("python3*/site-packages/minimodal"))
    assert packages and (packages[0] / "py.typed").is_file()
