"""Secrets: stored encrypted, delivered in the call frame, never shown by the API, logs or `docker inspect`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import minimodal
from minimodal.exception import InvalidError, NotFoundError
from tests.conftest import ROOT, Stack
from tests.functions import secrets as fns

VALUE = "s3cr3t-pa55-" + "x7q"  # a value that appears nowhere else


def _cli(stack: Stack, token: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "MINIMODAL_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "minimodal", *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def _stored_bytes(database_url: str) -> bytes:
    """What the database holds: the SQLite file, or every secrets row of a server database (PostgreSQL)."""
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///")).read_bytes()
    from sqlalchemy import select

    from mm_app.database import Database
    from mm_app.models import SecretRecord

    db = Database(database_url)
    try:
        with db.read() as session:
            rows = session.execute(select(SecretRecord.name, SecretRecord.keys, SecretRecord.data)).all()
    finally:
        db.dispose()
    return b"".join(repr(row).encode() + bytes(row.data) for row in rows)


def test_a_secret_reaches_the_function_and_appears_in_no_response_or_log(stack: Stack, user: str) -> None:
    created = _cli(stack, user, "secret", "create", "mm-test-db", f"DB_PASSWORD={VALUE}", "LAYER=named")
    assert created.returncode == 0, created.stderr
    assert VALUE not in created.stdout + created.stderr
    with fns.app.run():
        env = fns.read_env.remote(["DB_PASSWORD", "LAYER", "APP_ONLY", "DROPPED"])
    # Named, then inline: later secrets override earlier ones, app-level ones come first; None is dropped.
    assert env == {"DB_PASSWORD": VALUE, "LAYER": "function", "APP_ONLY": "a", "DROPPED": None}

    listed = _cli(stack, user, "secret", "list")
    assert listed.returncode == 0 and "mm-test-db" in listed.stdout and "DB_PASSWORD" in listed.stdout
    headers = {"Authorization": f"Bearer {user}"}
    for path in ("/v1/secrets", "/v1/secrets/mm-test-db"):
        reply = requests.get(stack.url + path, headers=headers, timeout=10)
        assert reply.ok and VALUE not in reply.text
    again = requests.post(
        stack.url + "/v1/secrets", json={"name": "mm-test-db", "values": {"A": "b"}}, headers=headers, timeout=10
    )
    assert again.status_code == 400 and "already exists" in again.text and VALUE not in again.text
    for log in ("api", "worker", "dispatcher"):
        assert VALUE not in stack.log(log)
    # At rest: the database holds a Fernet token, the key file is private to its owner.
    assert VALUE.encode() not in _stored_bytes(stack.env["MINIMODAL_DATABASE_URL"])
    key = Path(stack.home) / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Another user sees nothing of it.
    other = {"Authorization": f"Bearer {stack.new_user('secret-intruder')}"}
    assert requests.get(stack.url + "/v1/secrets/mm-test-db", headers=other, timeout=10).status_code == 404
    assert requests.get(stack.url + "/v1/secrets", headers=other, timeout=10).json() == {"secrets": []}
    assert requests.delete(stack.url + "/v1/secrets/mm-test-db", headers=other, timeout=10).status_code == 404

    deleted = _cli(stack, user, "secret", "delete", "mm-test-db")
    assert deleted.returncode == 0, deleted.stderr
    assert minimodal.Secret.list_secrets() == []


def test_a_secret_that_does_not_exist_fails_the_deploy_naming_it(user: str) -> None:
    with pytest.raises(NotFoundError, match="mm-no-such-secret"):
        with fns.missing_app.run():
            pass


def test_from_dotenv_and_from_local_environ_read_their_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text('# comment\nexport A=1\nB="two words"\nC=three # trailing\n\n')
    assert minimodal.Secret.from_dotenv(tmp_path)._spec() == {"values": {"A": "1", "B": "two words", "C": "three"}}
    assert minimodal.Secret.from_dotenv(tmp_path / ".env")._spec()["values"]["A"] == "1"
    with pytest.raises(InvalidError, match="no such file"):
        minimodal.Secret.from_dotenv(tmp_path / "missing")
    monkeypatch.setenv("MM_LOCAL_ONE", "1")
    assert minimodal.Secret.from_local_environ(["MM_LOCAL_ONE"])._spec() == {"values": {"MM_LOCAL_ONE": "1"}}
    with pytest.raises(InvalidError, match="MM_LOCAL_MISSING"):
        minimodal.Secret.from_local_environ(["MM_LOCAL_MISSING"])
    with pytest.raises(InvalidError, match="list of minimodal.Secret"):
        minimodal.App("bad").function(secrets=[object()])
    with pytest.raises(InvalidError, match="not strings"):
        minimodal.Secret.from_dict({"A": 1})  # type: ignore[dict-item]


@pytest.mark.docker
def test_a_secret_reaches_only_the_containers_of_functions_that_name_it_and_no_docker_inspect(
    docker_stack: Stack, docker_user: str
) -> None:
    import docker

    minimodal.Secret.create("mm-test-db", {"DB_PASSWORD": VALUE})
    with fns.app.run():
        assert fns.read_env.remote(["DB_PASSWORD"]) == {"DB_PASSWORD": VALUE}
        # A function that does not name the secret never gets it, not even after the other one ran.
        assert fns.read_env_unnamed.remote(["DB_PASSWORD", "APP_ONLY"]) == {"DB_PASSWORD": None, "APP_ONLY": "a"}
        assert fns.read_env.remote(["DB_PASSWORD"]) == {"DB_PASSWORD": VALUE}
        assert fns.read_env_unnamed.remote(["DB_PASSWORD"]) == {"DB_PASSWORD": None}
        client = docker.from_env()
        try:
            containers = client.containers.list(filters={"label": f"minimodal.home={docker_stack.home}"})
            assert len(containers) >= 2, "the warm containers of both functions are still up"
            for container in containers:
                assert VALUE not in str(client.api.inspect_container(container.id))
        finally:
            client.close()
    for log in ("api", "worker"):
        assert VALUE not in docker_stack.log(log)
    assert "DB_PASSWORD" not in os.environ
