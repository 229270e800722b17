"""Modal programs with no line changed: `import modal` is MiniModal under `minimodal run`/`deploy`, in
runners, and with MINIMODAL_AS_MODAL=1; nowhere else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Stack

PROGRAM = "tests/fixtures/as_modal.py"
EXPECTED = [
    "queue 16",
    "spawn 25",
    "map [0, 1, 4, 9]",
    "missing NotFoundError",
    "inside minimodal False",
    "types True True",
]


def _run(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def _lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.split(" ")[0] in {e.split(" ")[0] for e in EXPECTED}]


def test_an_unchanged_modal_program_runs_and_deploys_under_the_minimodal_cli(stack: Stack, user: str) -> None:
    env = {**stack.env, "MINIMODAL_TOKEN": user}
    assert _lines(_run([sys.executable, "-m", "minimodal", "run", PROGRAM], env)) == EXPECTED
    deployed = _run([sys.executable, "-m", "minimodal", "deploy", PROGRAM], env)
    assert deployed.returncode == 0, deployed.stderr
    call = "import minimodal; print(minimodal.Function.from_name('as-modal', 'square').remote(7))"
    assert _run([sys.executable, "-c", call], env).stdout.strip() == "49"


def test_minimodal_as_modal_1_runs_it_with_plain_python(stack: Stack, user: str) -> None:
    env = {**stack.env, "MINIMODAL_TOKEN": user, "MINIMODAL_AS_MODAL": "1"}
    assert _lines(_run([sys.executable, PROGRAM], env)) == EXPECTED


def test_elsewhere_import_modal_is_not_minimodal_and_a_real_modal_stays_itself(stack: Stack, tmp_path: Path) -> None:
    probe = [sys.executable, "-c", "import modal; print(modal.__name__, getattr(modal, 'REAL', False))"]
    missing = _run(probe, stack.env)
    assert missing.returncode == 1 and "No module named 'modal'" in missing.stderr
    (tmp_path / "modal").mkdir()
    (tmp_path / "modal" / "__init__.py").write_text("REAL = True\n")
    with_real = {**stack.env, "PYTHONPATH": str(tmp_path)}
    assert _run(probe, with_real).stdout.strip() == "modal True"
    assert _run(probe, {**with_real, "MINIMODAL_AS_MODAL": "1"}).stdout.strip() == "minimodal False"
    program = tmp_path / "which.py"
    program.write_text("import modal\napp = modal.App('which')\nprint(modal.__name__)\n")
    # `minimodal run` runs Modal programs on MiniModal even where the real package is installed.
    ran = _run([sys.executable, "-m", "minimodal", "run", str(program)], with_real)
    assert ran.stdout.splitlines()[0] == "minimodal", ran.stderr
