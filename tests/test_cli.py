"""The command line, driven as a user would: subprocesses against real stacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, Stack, free_port, missing

MINIMODAL = [sys.executable, "-m", "minimodal"]


def _env(stack: Stack, token: str) -> dict[str, str]:
    return {**stack.env, "MINIMODAL_TOKEN": token}


def _run(argv: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_minimodal_run_runs_the_local_entrypoint_of_the_example(stack: Stack, user: str) -> None:
    result = _run([*MINIMODAL, "run", "examples/hello.py"], _env(stack, user))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "local   9" in lines
    assert "remote  16" in lines
    assert "spawn   25" in lines
    assert "map     [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in lines
    assert "starmap [1, 4]" in lines
    assert "gather  [36, 49]" in lines
    assert "nested  14" in lines  # a function calling a function


def test_python_file_with_app_run_works_too(stack: Stack, user: str) -> None:
    result = _run([sys.executable, "examples/hello.py"], _env(stack, user))
    assert result.returncode == 0, result.stderr
    assert "remote  16" in result.stdout


def test_file_double_colon_name_runs_one_function_with_typed_options(stack: Stack, user: str) -> None:
    result = _run([*MINIMODAL, "run", "tests/functions/basic.py::add", "--a", "3", "--b", "4"], _env(stack, user))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"


def test_an_unknown_name_is_a_clear_error(stack: Stack, user: str) -> None:
    result = _run([*MINIMODAL, "run", "examples/hello.py::nope"], _env(stack, user))
    assert result.returncode == 1
    assert "no local entrypoint or function named 'nope'" in result.stderr


def test_editing_a_line_and_rerunning_takes_effect_without_a_rebuild(stack: Stack, user: str, tmp_path: Path) -> None:
    app_file = tmp_path / "edited.py"
    template = (
        "import minimodal\n"
        "app = minimodal.App('edited')\n"
        "@app.function()\n"
        "def version():\n"
        "    return {!r}\n"
        "@app.local_entrypoint()\n"
        "def main():\n"
        "    print(version.remote())\n"
    )
    app_file.write_text(template.format("first"))
    assert _run([*MINIMODAL, "run", str(app_file)], _env(stack, user)).stdout.strip() == "first"
    app_file.write_text(template.format("second"))
    assert _run([*MINIMODAL, "run", str(app_file)], _env(stack, user)).stdout.strip() == "second"


def test_user_create_prints_a_token_that_works_with_its_quota(stack: Stack) -> None:
    result = _run(
        [*MINIMODAL, "user", "create", "cli-made", "--quota", "3", "--weight", "2"], _env(stack, stack.admin_token)
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    me = requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
    assert me == {"name": "cli-made", "quota": 3, "weight": 2, "is_admin": False}
    changed = _run([*MINIMODAL, "user", "set", "cli-made", "--quota", "7"], _env(stack, stack.admin_token))
    assert changed.stdout.strip() == "cli-made: quota=7 weight=2"


def test_user_create_needs_an_admin_token(stack: Stack, user: str) -> None:
    result = _run([*MINIMODAL, "user", "create", "not-allowed"], _env(stack, user))
    assert result.returncode == 1
    assert "PermissionDeniedError" in result.stderr and "admin" in result.stderr


def test_status_exits_0_when_the_api_answers_and_1_when_not(stack: Stack) -> None:
    assert _run([*MINIMODAL, "status"], stack.env).returncode == 0
    down = {**stack.env, "MINIMODAL_SERVER_URL": f"http://127.0.0.1:{free_port()}"}
    result = _run([*MINIMODAL, "status"], down)
    assert result.returncode == 1
    assert "cannot reach" in result.stdout


def test_up_detach_starts_a_stack_from_nothing_and_down_stops_it(tmp_path: Path) -> None:
    if not any(os.access(Path(p) / "redis-server", os.X_OK) for p in os.environ.get("PATH", "").split(":")):
        missing("redis-server is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMODAL_")}
    env.update(
        {
            "MINIMODAL_HOME": str(tmp_path / "home"),
            "MINIMODAL_API_PORT": str(free_port()),
            "MINIMODAL_LOCAL_REDIS_PORT": str(free_port()),
            "MINIMODAL_FLOWER_PORT": str(free_port()),
            "PYTHONPATH": str(ROOT),
        }
    )
    up = _run([*MINIMODAL, "up", "--detach"], env, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "MiniModal is up" in up.stdout
        profile = (tmp_path / "home" / "config.toml").read_text()
        assert "token = " in profile and f":{env['MINIMODAL_API_PORT']}" in profile
        assert oct((tmp_path / "home" / "config.toml").stat().st_mode)[-3:] == "600"
        assert _run([*MINIMODAL, "status"], env).returncode == 0
        # No token or URL in the environment: the profile written by `up` is enough.
        hello = _run([*MINIMODAL, "run", "examples/hello.py"], env)
        assert hello.returncode == 0, hello.stderr
        assert "remote  16" in hello.stdout
    finally:
        down = _run([*MINIMODAL, "down"], env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert _run([*MINIMODAL, "status"], env).returncode == 1
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "home")], capture_output=True, text=True).stdout
    assert leftover == ""
    pids = list((tmp_path / "home" / "run").glob("*.pid"))
    assert pids == []


@pytest.mark.parametrize("module", ["minimodal", "workers.pool", "workers.runtimes.process"])
def test_the_sdk_and_workers_import_no_server_frameworks(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('flask', 'celery', 'docker', 'sqlalchemy', 'redis', 'mm_app') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""


def test_the_api_imports_no_worker_code() -> None:
    code = "import sys, mm_app.api; print([m for m in sys.modules if m.startswith('workers')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_the_stack_imports_no_blueprint_and_no_web_framework() -> None:
    # `minimodal up` creates the first user through mm_app/accounts.py, not through the API's routes.
    code = "import sys, mm_app.stack; print([m for m in sys.modules if m.startswith(('mm_app.api', 'flask'))])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_the_public_namespace_exports_what_all_lists() -> None:
    import minimodal

    assert sorted(minimodal.__all__) == sorted(
        n
        for n in vars(minimodal)
        if not n.startswith("_")
        and n not in {"app", "cli", "defaults", "image", "protocol", "retries", "runtime"}
        and n
        not in {"dict", "queue", "sandbox", "secret", "volume"}  # modules of the classes; `dict` shadows a builtin
    )
    for name in minimodal.__all__:
        assert hasattr(minimodal, name)
