"""The benchmark suite runs end to end at a tiny size and leaves nothing behind (its figures are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, docker_engine


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMODAL_")}
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the bench takes its stacks down on the way out
        stdout, stderr = bench.communicate(timeout=120)
    assert bench.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "== goals" in stdout
    results = json.loads(out.read_text())
    assert results["homes"], "the bench started no stack"
    for home in results["homes"]:
        assert not Path(home).exists()
        assert not processes_in(home), f"processes outlived the bench: {processes_in(home)}"
    return results


def processes_in(home: str) -> list[int]:
    """Processes whose working directory is (was) a stack's home: what the stack started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(home):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.timeout(1500)
def test_the_bench_measures_every_item_against_a_celery_baseline_and_stops_what_it_started(tmp_path: Path) -> None:
    results = run_bench(tmp_path, "--runtimes", "process")
    base = results["baseline"]
    assert base["round_trip"]["n"] == 20 and base["throughput"]["tasks"] == 200
    assert results["remote"]["process"]["n"] == 20
    assert results["cold"]["process"]["n"] == 2
    assert [run["inputs"] for run in results["map"]["runs"]] == [300, 300]
    assert results["map"]["large"]["inputs"] == 1000 and results["map"]["large"]["first_result_ms"] > 0
    for name in ("api", "dispatcher", "worker"):
        assert results["map"]["memory"]["after_map_2"][name]["rss_mib"] > 0
        assert results["map"]["memory"]["after_large_map"][name]["rss_mib"] > 0
        assert name in results["map"]["growth"] and name in results["map"]["large_growth"]
    assert set(results["payloads"]) == {"1 KiB", "1 MiB"}
    fair = results["fairness"]
    assert {"shares", "starvation", "many_users", "one_user", "scale_ratio"} <= set(fair)
    assert set(results["goals"]) == {
        "remote_p50_vs_celery",
        "remote_p99_vs_celery",
        "map_vs_celery",
        "map_per_second",
        "many_users",
        "many_users_90",
        "large_map_per_second",
        "map_first_result",
        "map_memory_flat",
    }
    assert_curves(results, tmp_path / "bench.png")


def assert_curves(results: dict, png: Path) -> None:
    """The curves of the quick size, their shape only: every point measured, the machine described, drawn."""
    machine = results["machine"]
    assert machine["cpus"] >= 1 and machine["memory_gib"] > 0 and machine["kernel"] and machine["python"]
    assert len(machine["commit"].removesuffix("-dirty")) == 40
    dispatch = results["dispatch"]["points"]
    assert [(p["users"], p["freed_per_pass"]) for p in dispatch] == [(1, 1), (1, 16), (10, 1), (10, 16)]
    for point in dispatch:
        assert point["calls"] >= 20 and point["per_call_us"] > 0 and point["redis_commands_per_call"] > 0
    depth = results["depth"]["points"]
    assert [(p["queued"], p["filler_path"]) for p in depth] == [(300, "http"), (1000, "direct")]
    for point in depth:
        assert point["submit_per_second"] > 0 and point["drain"]["inputs"] == 100
    workers = results["workers"]["points"]
    assert [(p["workers"], p["slots"], p["inputs"]) for p in workers] == [(1, 4, 100), (2, 8, 100)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_the_bench_measures_warm_calls_and_cold_starts_in_containers(tmp_path: Path) -> None:
    client = docker_engine()
    try:
        results = run_bench(tmp_path, "--runtimes", "docker", "--only", "remote,cold")
        assert results["remote"]["docker"]["n"] == 20
        assert results["cold"]["docker"]["n"] == 2
        assert "cold_start" in results["goals"]
        for home in results["homes"]:
            assert client.containers.list(all=True, filters={"label": f"minimodal.home={home}"}) == []
    finally:
        client.close()


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_the_bench_measures_runc_against_runsc_in_the_same_run(tmp_path: Path) -> None:
    client = docker_engine()
    try:
        results = run_bench(tmp_path, "--runtimes", "docker", "--only", "sandboxes")
        figures = results["sandboxes"]
        assert figures.get("skipped") is None, figures["skipped"]  # make docker-base registers runsc
        for runtime in ("runc", "runsc"):
            assert set(figures[runtime]) == {"cold_start", "warm_remote", "map", "cpu_call", "syscall_call"}
            assert figures[runtime]["warm_remote"]["n"] == 5 and figures[runtime]["map"]["inputs"] == 20
        for home in results["homes"]:
            assert client.containers.list(all=True, filters={"label": f"minimodal.home={home}"}) == []
    finally:
        client.close()
