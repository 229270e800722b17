"""Volumes: a content-addressed store on the control plane, worker caches synced on mount and commit."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

import minimodal
from minimodal.exception import InvalidError, NotFoundError
from tests.conftest import ROOT, RedisServer, Stack, start_stack, stop_process, wait_for
from tests.functions import volumes as fns


def deploy(fn: Callable[..., Any], vol: minimodal.Volume, **options: Any) -> tuple[minimodal.App, Any]:
    app = minimodal.App("volumes")
    return app, app.function(serialized=True, name=fn.__name__, volumes={"/data": vol}, timeout=120, **options)(fn)


def test_the_client_uploads_lists_reads_and_removes_files(user: str, tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("A")
    (tmp_path / "tree" / "sub" / "b.txt").write_text("B" * 3000)
    (tmp_path / "one.bin").write_bytes(b"\x00\x01" * 1000)
    vol = minimodal.Volume.from_name("client-vol", create_if_missing=True)
    with vol.batch_upload() as batch:
        batch.put_file(tmp_path / "one.bin", "/bin/one.bin")
        batch.put_file(io.BytesIO(b"from memory"), "mem.txt")
        batch.put_directory(tmp_path / "tree", "/tree")
    assert [(e.path, e.type) for e in vol.listdir("/")] == [
        ("bin", "directory"),
        ("mem.txt", "file"),
        ("tree", "directory"),
    ]
    assert [e.path for e in vol.listdir("/", recursive=True) if e.type == "file"] == [
        "bin/one.bin",
        "mem.txt",
        "tree/a.txt",
        "tree/sub/b.txt",
    ]
    assert b"".join(vol.read_file("tree/sub/b.txt")) == b"B" * 3000
    assert b"".join(vol.read_file("/bin/one.bin")) == b"\x00\x01" * 1000
    with pytest.raises(InvalidError, match="exists"):
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"again"), "mem.txt")
    with vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"again"), "mem.txt")
    assert b"".join(vol.read_file("mem.txt")) == b"again"
    with pytest.raises(InvalidError, match="recursive"):
        vol.remove_file("tree")
    vol.remove_file("tree", recursive=True)
    vol.remove_file("mem.txt")
    assert [e.path for e in vol.listdir("/", recursive=True)] == ["bin", "bin/one.bin"]
    with pytest.raises(NotFoundError):
        b"".join(vol.read_file("mem.txt"))
    with pytest.raises(InvalidError, match="leaves the volume"):
        vol.listdir("../../etc")
    assert {"name": "client-vol", "id": vol.object_id} in minimodal.Volume.list_volumes()
    minimodal.Volume.delete("client-vol")
    with pytest.raises(NotFoundError):
        minimodal.Volume.from_name("client-vol").listdir()


def test_another_user_cannot_read_list_or_write_a_volume(user: str, stack: Stack) -> None:
    vol = minimodal.Volume.from_name("private-vol", create_if_missing=True)
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"private bytes"), "p.txt")
    other = {"Authorization": f"Bearer {stack.new_user('volume-intruder')}"}
    base = f"{stack.url}/v1/volumes/{vol.object_id}"
    for method, path in (("GET", "/entries"), ("GET", "/files/p.txt"), ("PUT", "/files/x"), ("DELETE", "/files/p.txt")):
        reply = requests.request(method, base + path, headers=other, data=b"x", timeout=10)
        assert reply.status_code == 404, (method, path, reply.text)
    assert b"".join(vol.read_file("p.txt")) == b"private bytes"


def test_a_function_on_a_process_worker_with_a_volume_fails_clearly(user: str) -> None:
    with minimodal.Volume.ephemeral() as vol:
        app, f = deploy(fns.read, vol)
        with app.run():
            with pytest.raises(minimodal.exception.RemoteError, match="mounted in containers only"):
                f.remote("x")


def test_app_level_volumes_mount_in_every_function_and_bad_mounts_are_refused(user: str) -> None:
    with minimodal.Volume.ephemeral() as vol:
        app = minimodal.App("app-volumes", volumes={"/data": vol})
        f = app.function(serialized=True, name="read")(fns.read)
        with app.run():  # deployed with the mount: this process worker refuses it, naming the path
            with pytest.raises(minimodal.exception.RemoteError, match="/data"):
                f.remote("x")
        with pytest.raises(InvalidError, match="absolute"):
            minimodal.App("bad", volumes={"data": vol})
        bad = minimodal.App("bad-path")
        bad.function(serialized=True, name="read", volumes={"/proc": vol})(fns.read)
        with pytest.raises(InvalidError, match="system directory"):
            with bad.run():
                pass


def test_a_file_of_1_gib_streams_both_ways_without_being_held_in_memory(
    user: str, stack: Stack, tmp_path: Path
) -> None:
    size = 1024 * 1024 * 1024
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:  # sparse but for a marker at each end: quick to make, real bytes to move
        out.write(b"head")
        out.seek(size - 4)
        out.write(b"tail")
    env = {**stack.env, "MINIMODAL_TOKEN": user}
    script = (
        "import resource, sys, minimodal\n"
        "from minimodal import _cli_objects\n"
        "vol = minimodal.Volume.from_name('big', create_if_missing=True)\n"
        "with vol.batch_upload() as b: b.put_file(sys.argv[1], '/big.bin')\n"
        "with open(sys.argv[2], 'wb') as out: n = vol.read_file_into_fileobj('/big.bin', out)\n"
        "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    copy = tmp_path / "copy.bin"
    done = subprocess.run(
        [sys.executable, "-c", script, str(big), str(copy)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    written, max_rss_kib = map(int, done.stdout.split())
    assert written == size and copy.stat().st_size == size
    with open(copy, "rb") as source:
        assert source.read(4) == b"head"
        source.seek(size - 4)
        assert source.read(4) == b"tail"
    # About 70 MiB alone; twice, inside the full suite on a loaded machine, about 360 MiB (not understood
    # yet). Either way far below the 1 GiB file, which is what this proves: it is never held whole.
    assert max_rss_kib < 512 * 1024, f"the client held {max_rss_kib} KiB"
    api_pid = stack.processes["api"].pid
    peak = next(line for line in Path(f"/proc/{api_pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    assert int(peak.split()[1]) < 400 * 1024, f"the API held {peak}"
    print(f"1 GiB up and down: client max RSS {max_rss_kib} KiB, API {peak}")  # shown with -s
    minimodal.Volume.delete("big")


@pytest.mark.docker
def test_functions_read_and_write_the_mounted_volume_and_commits_merge(docker_user: str) -> None:
    with minimodal.Volume.ephemeral() as vol:
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"uploaded"), "in/up.txt")
        app, write = deploy(fns.write, vol)
        read = app.function(serialized=True, name="read", volumes={"/data": vol}, timeout=120)(fns.read)
        remove = app.function(serialized=True, name="remove", volumes={"/data": vol}, timeout=120)(fns.remove)
        commit_wait = app.function(serialized=True, name="cw", volumes={"/data": vol}, timeout=120)(
            fns.write_commit_then_wait
        )
        reload_until = app.function(serialized=True, name="ru", volumes={"/data": vol}, timeout=120)(fns.reload_until)
        with app.run():
            assert read.remote("in/up.txt") == "uploaded"
            assert write.remote("out/w.txt", "written") == 7
            # Committed when the call ended: the client sees it.
            assert b"".join(vol.read_file("out/w.txt")) == b"written"
            # Concurrent commits to different files both survive.
            calls = [write.spawn(f"many/{i}.txt", str(i)) for i in range(4)]
            assert [c.get(timeout=120) for c in calls] == [1, 1, 1, 1]
            assert sorted(e.path for e in vol.listdir("many")) == [f"many/{i}.txt" for i in range(4)]
            # vol.commit() in a running call; vol.reload() in another running call sees it.
            writer = commit_wait.spawn(vol, "live.txt", "live", 5)
            assert reload_until.remote(vol, "live.txt", 60) == "live"
            writer.get(timeout=120)
            # A removal in a function is committed too.
            assert remove.remote("in/up.txt") is True
            assert "in/up.txt" not in [e.path for e in vol.listdir("/", recursive=True)]


@pytest.mark.docker
def test_a_with_options_variant_mounts_its_own_volumes_in_place_of_the_functions(docker_user: str) -> None:
    with minimodal.Volume.ephemeral() as first, minimodal.Volume.ephemeral() as second:
        for vol, text in ((first, b"first"), (second, b"second")):
            with vol.batch_upload() as batch:
                batch.put_file(io.BytesIO(text), "which.txt")
        app = minimodal.App("volumes-variant")
        read = app.function(serialized=True, name="read", volumes={"/data": first}, timeout=120)(fns.read)
        with app.run():
            assert read.remote("which.txt") == "first"
            assert read.with_options(volumes={"/data": second}).remote("which.txt") == "second"


@pytest.mark.docker
def test_workers_with_their_own_data_dirs_share_commits_through_the_api_alone(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on two other hosts: neither worker can open the API's store, only reach the API over HTTP."""
    from tests.conftest import docker_engine, use_stack

    docker_engine().close()  # skips (or fails in CI) without Docker
    api_home, first_home, second_home = tmp_path / "api", tmp_path / "first", tmp_path / "second"
    for home in (api_home, first_home, second_home):
        home.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    no_store = blocker / "volumes"  # cannot exist, even for root: what a worker that used its path would need

    def on_its_own_host(home: Path) -> dict[str, str]:
        return {"MINIMODAL_HOME": str(home), "MINIMODAL_VOLUME_STORE": str(no_store)}

    stack = start_stack(redis_server, api_home, runtime="docker", db=9, worker_env=on_its_own_host(first_home))
    try:
        request = type("R", (), {"node": type("N", (), {"nodeid": "two-workers"})()})()
        use_stack(stack, request, monkeypatch)  # type: ignore[arg-type]
        vol = minimodal.Volume.from_name("shared-vol", create_if_missing=True)
        app, write = deploy(fns.write, vol)
        read = app.function(serialized=True, name="read", volumes={"/data": vol}, timeout=120)(fns.read)
        with app.run():
            assert write.remote("from-first.txt", "hello from worker 1") == 19
            first = {w["worker_id"] for w in stack.workers()}
            stop_process(stack.processes.pop("worker"))
            stack.spawn("worker2", "worker", extra_env=on_its_own_host(second_home))
            wait_for(lambda: {w["worker_id"] for w in stack.workers()} - first, 60, "the second worker to beat")
            assert read.remote("from-first.txt") == "hello from worker 1"
            assert write.remote("from-second.txt", "and back") == 8
        assert b"".join(vol.read_file("from-second.txt")) == b"and back"  # committed by worker 2, via the API
        cached = second_home / "volcache" / vol.object_id / "data" / "from-first.txt"
        assert cached.read_text() == "hello from worker 1"  # the second worker's own cache, synced over HTTP
        assert json.loads((first_home / "volcache" / vol.object_id / "state.json").read_text())["from-first.txt"]
        sha = hashlib.sha256(b"hello from worker 1").hexdigest()
        assert (api_home / "volumes" / "blobs" / sha[:2] / sha).read_bytes() == b"hello from worker 1"
        assert blocker.read_text() == "not a directory"
        assert not (first_home / "volumes").exists() and not (second_home / "volumes").exists()
    finally:
        stack.stop()


def test_the_internal_blob_routes_take_the_workers_credential_and_check_the_content(user: str, stack: Stack) -> None:
    url = stack.url + "/internal/volume-blobs/"
    worker = {"Authorization": f"Bearer {stack.env['MINIMODAL_WORKER_TOKEN']}"}
    content = b"a version of a file" * 1000
    sha = hashlib.sha256(content).hexdigest()
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {user}"}, 403), (worker, 404)):
        assert requests.get(url + sha, headers=headers, timeout=10).status_code == status
    assert requests.head(url + sha, headers=worker, timeout=10).status_code == 404
    refused = requests.put(url + sha, data=b"other bytes", headers=worker, timeout=10)
    assert refused.status_code == 400 and "hashes to" in refused.json()["error"]["message"]
    assert requests.put(url + "not-a-sha", data=content, headers=worker, timeout=10).status_code == 400
    assert requests.head(url + sha, headers=worker, timeout=10).status_code == 404  # nothing was kept
    stored = requests.put(url + sha, data=io.BytesIO(content), headers=worker, timeout=10)
    assert stored.status_code == 201 and stored.json() == {"sha": sha, "size": len(content)}
    assert requests.head(url + sha, headers=worker, timeout=10).status_code == 200
    reply = requests.get(url + sha, headers=worker, timeout=10)
    assert reply.status_code == 200 and reply.content == content
    assert (stack.home / "volumes" / "blobs" / sha[:2] / sha).read_bytes() == content


def test_a_workers_store_client_moves_files_over_http_and_names_a_wrong_credential(
    stack: Stack, tmp_path: Path
) -> None:
    from mm_app.tasks.blobs import ContentChanged, RemoteBlobStore

    source = tmp_path / "f.bin"
    source.write_bytes(b"worker bytes" * 100_000)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    store = RemoteBlobStore(stack.url, stack.env["MINIMODAL_WORKER_TOKEN"])
    assert not store.has(sha)
    store.upload(source, sha)
    assert store.has(sha)
    (tmp_path / "back.bin").touch()
    assert store.download(sha, tmp_path / "back.bin") == source.stat().st_size
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    source.write_bytes(b"rewritten while it was committed")
    with pytest.raises(ContentChanged):
        store.upload(source, hashlib.sha256(b"what it held when hashed").hexdigest())
    stranger = RemoteBlobStore(stack.url, "a-token-of-another-stack")
    with pytest.raises(minimodal.exception.ServiceError, match="set the same MINIMODAL_WORKER_TOKEN"):
        stranger.has(sha)
    with pytest.raises(minimodal.exception.ServiceError, match="set the same MINIMODAL_WORKER_TOKEN"):
        stranger.download(sha, tmp_path / "back.bin")


def test_the_workers_credential_is_made_once_into_the_data_dir_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mm_app import credential

    monkeypatch.setenv("MINIMODAL_HOME", str(tmp_path))
    monkeypatch.delenv("MINIMODAL_WORKER_TOKEN", raising=False)
    token = credential._load()
    assert len(token) >= 32 and credential._load() == token
    path = tmp_path / credential.TOKEN_FILE
    assert path.read_text() == token and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [credential.TOKEN_FILE]  # no temp file left behind
    monkeypatch.setenv("MINIMODAL_WORKER_TOKEN", "set-by-the-operator")
    assert credential._load() == "set-by-the-operator"


def test_the_volume_cli_creates_lists_puts_gets_removes_and_deletes(user: str, stack: Stack, tmp_path: Path) -> None:
    def cli(*argv: str) -> str:
        env = {**stack.env, "MINIMODAL_TOKEN": user}
        done = subprocess.run(
            [sys.executable, "-m", "minimodal", "volume", *argv],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    (tmp_path / "local.txt").write_text("local content")
    assert "cli-vol is vo-" in cli("create", "cli-vol")
    assert "cli-vol" in cli("list")
    cli("put", "cli-vol", "local.txt", "/docs/")
    assert "docs/local.txt" in cli("ls", "cli-vol", "/docs")
    assert cli("get", "cli-vol", "/docs/local.txt", "-") == "local content"
    cli("get", "cli-vol", "/docs/local.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "local content"
    cli("rm", "cli-vol", "/docs", "-r")
    assert cli("ls", "cli-vol") == ""
    cli("delete", "cli-vol")
    assert "cli-vol" not in cli("list")
