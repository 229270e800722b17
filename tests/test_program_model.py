"""Modal's program model: the app's module is imported by name in the runner, and functions call functions.

Runs on the process stack (runner processes); tests/test_program_model_docker.py covers containers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import requests

import minimodal
from tests.conftest import ROOT, Stack
from tests.functions import nested


@pytest.fixture
def running(user: str):  # type: ignore[no-untyped-def]
    with nested.app.run():
        yield nested.app


def test_the_module_runs_in_the_runner_with_its_helpers_dataclasses_and_imports_block(running: minimodal.App) -> None:
    point, imported_remotely, name = nested.uses_module.remote(nested.Point(4, 2))
    assert point == nested.Point(42, 0)  # a dataclass of the module, both ways, and a module-level helper
    assert imported_remotely is True and nested.IMPORTED_REMOTELY is False
    assert name == '"tests.functions.nested"'  # imported under its own name: no __main__ block runs


def test_a_function_calls_another_function_every_way(running: minimodal.App) -> None:
    found = nested.calls_every_way.remote(5)
    assert found == {
        "remote": 10,
        "spawn": 10,
        "from_id": 10,
        "map": [2, 4, 6],
        "starmap": [8, 10],
        "gather": [12, 14],
        "remote_gen": [0, 1, 2],
        "aio": 16,
        "spawn_map": None,
    }


def test_a_generator_and_a_class_method_call_functions(running: minimodal.App) -> None:
    assert list(nested.generator_calling.remote_gen(3)) == [0, 2, 4]
    assert nested.Caller().go.remote(20) == 41


def test_a_call_knows_its_ids_and_its_children_record_it_as_parent(stack: Stack, user: str) -> None:
    with nested.app.run():
        fc = nested.ids.spawn()
        found = fc.get(timeout=60)
    assert found["call"] == fc.object_id
    assert found["input"] == f"{fc.object_id}:0"
    assert found["task"] and found["task"].startswith("ta-")
    headers = {"Authorization": f"Bearer {user}"}
    child = requests.get(f"{stack.url}/v1/calls/{found['child_call']}", headers=headers, timeout=10).json()
    assert child["parent_call_id"] == fc.object_id
    top = requests.get(f"{stack.url}/v1/calls/{fc.object_id}", headers=headers, timeout=10).json()
    assert top["parent_call_id"] is None


def test_a_parent_header_from_a_user_token_is_not_believed(stack: Stack, user: str) -> None:
    with nested.app.run():
        fc = nested.leaf.spawn(1)
        reply = requests.post(
            f"{stack.url}/v1/functions/{nested.leaf.object_id}/calls",
            json={"inputs": [{"args": minimodal.protocol.b64(__import__("cloudpickle").dumps(((2,), {})))}]},
            headers={"Authorization": f"Bearer {user}", "X-MiniModal-Parent-Call": fc.object_id},
            timeout=10,
        ).json()
        call = requests.get(
            f"{stack.url}/v1/calls/{reply['call_id']}", headers={"Authorization": f"Bearer {user}"}, timeout=10
        ).json()
    assert call["parent_call_id"] is None


def test_function_from_name_works_inside_a_function(user: str) -> None:
    from tests.functions import deployed

    deployed.app.deploy()
    with nested.app.run():
        target = minimodal.Function.from_name("tests-deployed", "double")
        expected = target.remote(21)
        assert nested.by_name.remote("tests-deployed", "double", 21) == expected


def test_cls_from_name_and_with_options_work_inside_a_function(user: str) -> None:
    from tests.functions import classes

    classes.app.deploy()
    with nested.app.run():
        assert nested.cls_by_name.remote(3) == (18, 3)


def test_four_parents_mapping_over_children_finish_with_a_quota_of_two(stack: Stack, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    token = stack.new_user("nesting-quota-2", quota=2)
    for key in ("MINIMODAL_HOME", "MINIMODAL_SERVER_URL"):
        monkeypatch.setenv(key, stack.env[key])
    monkeypatch.setenv("MINIMODAL_TOKEN", token)
    with nested.app.run():
        calls = [nested.parent.spawn(3) for _ in range(4)]
        results = [fc.get(timeout=90) for fc in calls]
    assert results == [0 + 2 + 4] * 4


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "minimodal", "run", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_local_package_of_two_modules_runs_and_an_edit_takes_effect_on_the_next_run(
    user: str, tmp_path: Path
) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("GREETING = 'hello'\n\ndef greet(name):\n    return f'{GREETING} {name}'\n")
    (pkg / "main.py").write_text(
        textwrap.dedent(
            """
            import minimodal
            from . import helpers

            app = minimodal.App("local-package")

            @app.function()
            def hello(name):
                return helpers.greet(name) + " from " + __name__

            @app.local_entrypoint()
            def main():
                print("RESULT:", hello.remote("world"))

            if __name__ == "__main__":
                raise SystemExit("the __main__ block must not run")
            """
        )
    )
    first = _run_cli(["mypkg/main.py"], tmp_path)
    assert "RESULT: hello world from mypkg.main" in first.stdout, first.stdout + first.stderr
    (pkg / "helpers.py").write_text("GREETING = 'bonjour'\n\ndef greet(name):\n    return f'{GREETING} {name}'\n")
    second = _run_cli(["-m", "mypkg.main"], tmp_path)
    assert "RESULT: bonjour world from mypkg.main" in second.stdout, second.stdout + second.stderr


def test_a_script_run_with_python_imports_by_its_stem(user: str, tmp_path: Path) -> None:
    (tmp_path / "script_app.py").write_text(
        textwrap.dedent(
            """
            import minimodal

            app = minimodal.App("script-app")
            MARK = "remote" if not minimodal.is_local() else "local"

            @app.function()
            def where():
                return MARK, __name__

            if __name__ == "__main__":
                with app.run():
                    print("RESULT:", where.remote())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "script_app.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "RESULT: ('remote', 'script_app')" in done.stdout, done.stdout + done.stderr


def test_serialized_true_still_ships_by_value(user: str) -> None:
    app = minimodal.App("by-value")
    seen = threading.get_ident()

    @app.function(serialized=True)
    def closure() -> int:
        return seen

    with app.run():
        assert closure.remote() == seen
