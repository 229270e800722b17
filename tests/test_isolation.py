"""Tenant isolation: a second user's token reaches none of the first user's objects, on every route.

The matrix is one table, ``ROUTES``: Flask endpoint -> how to call it on user A's objects and what user
B must get. ``test_every_route_of_the_app_is_in_the_isolation_table`` walks ``app.url_map``, so a route
added without a row here fails the suite: new endpoints (volumes, secrets, dicts, queues, schedules,
web endpoints...) must say how they are isolated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import requests

import minimodal
from minimodal import protocol
from minimodal._websocket import HandshakeError, WebSocket
from mm_app import keyspace
from mm_app.api import create_app
from tests.conftest import Stack, wait_for
from tests.functions import basic, faults, hardening, webapps

# What user B must get:
HIDDEN = "hidden"  # 404 NotFoundError: the object exists for A only
ADMIN = "admin"  # 403 PermissionDeniedError: admin-only route
OWN = "own"  # 2xx, but B's own view: none of A's ids or names appear in the reply
PUBLIC = "public"  # no token needed; holds no user data (checked: none of A's ids or names appear)
SHARED = "shared"  # content-addressed build cache, shared on purpose (see SECURITY.md); not checked here
PROXY = "proxy"  # 401 AuthError: a web endpoint with requires_proxy_auth takes only its owner's token
WORKER = "worker"  # 403 PermissionDeniedError: an internal route of workers; an admin's token and no token fail too


@dataclass(frozen=True)
class Route:
    method: str
    path: Callable[[dict[str, str]], str]  # A's objects -> the URL path to try with B's token
    expect: str
    body: Any = None  # JSON body, or bytes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _args() -> str:
    return protocol.b64(cloudpickle.dumps(((1,), {})))


ROUTES: dict[str, Route] = {
    "health.health": Route("GET", lambda a: "/health", PUBLIC),
    "observe.stats.ready": Route("GET", lambda a: "/ready", PUBLIC),
    "observe.openapi.openapi_json": Route("GET", lambda a: "/openapi.json", PUBLIC),
    "observe.dashboard.dashboard": Route("GET", lambda a: "/dashboard", PUBLIC),
    "observe.dashboard.static": Route("GET", lambda a: "/dashboard/static/dashboard.js", PUBLIC),
    "static": Route("GET", lambda a: "/static/none", PUBLIC),
    "observe.stats.get_stats": Route("GET", lambda a: "/stats", OWN),
    "observe.metrics.get_metrics": Route("GET", lambda a: "/metrics", ADMIN),
    "users.me": Route("GET", lambda a: "/v1/me", OWN),
    "users.create": Route("POST", lambda a: "/v1/users", ADMIN, {"name": "made-by-b"}),
    "users.update": Route("PATCH", lambda a: f"/v1/users/{a['user']}", ADMIN, {"quota": 99}),
    "users.revoke": Route("POST", lambda a: "/v1/tokens/revoke", ADMIN, {"user": "{user}"}),
    "apps.create_app_record": Route("POST", lambda a: "/v1/apps", OWN, {"name": "b-app"}),
    "apps.list_apps": Route("GET", lambda a: "/v1/apps", OWN),
    "apps.stop_app": Route("POST", lambda a: f"/v1/apps/{a['app']}/stop", HIDDEN),
    "apps.get_function": Route("GET", lambda a: f"/v1/functions/{a['function']}", HIDDEN),
    "calls.create_call": Route(
        "POST", lambda a: f"/v1/functions/{a['function']}/calls", HIDDEN, {"inputs": [{"args": "{args}"}]}
    ),
    "calls.add_inputs": Route("POST", lambda a: f"/v1/calls/{a['call']}/inputs", HIDDEN, {"inputs": []}),
    "calls.get_call": Route("GET", lambda a: f"/v1/calls/{a['call']}", HIDDEN),
    "calls.get_attempts": Route("GET", lambda a: f"/v1/calls/{a['call']}/attempts", HIDDEN),
    "calls.cancel_call": Route("POST", lambda a: f"/v1/calls/{a['call']}/cancel", HIDDEN),
    "calls.get_outputs": Route("GET", lambda a: f"/v1/calls/{a['call']}/outputs?timeout=0", HIDDEN),
    "calls.put_blob": Route("PUT", lambda a: "/v1/blobs", OWN, b"\x80\x05K\x01."),
    "calls.get_blob": Route("GET", lambda a: f"/v1/blobs/{a['blob']}", HIDDEN),
    "streams.stream": Route("GET", lambda a: f"/v1/calls/{a['call']}/stream", HIDDEN),
    "streams.stream:items": Route("GET", lambda a: f"/v1/calls/{a['item_call']}/stream", HIDDEN),
    "streams.stream_ws": Route("GET", lambda a: f"/v1/calls/{a['call']}/ws", HIDDEN),
    "containers.list_containers": Route("GET", lambda a: "/v1/containers", OWN),
    "containers.get_container": Route("GET", lambda a: f"/v1/containers/{a['container']}", HIDDEN),
    "containers.container_logs": Route("GET", lambda a: f"/v1/containers/{a['container']}/logs", HIDDEN),
    "containers.stop_container": Route("POST", lambda a: f"/v1/containers/{a['container']}/stop", HIDDEN),
    "containers.exec_in_container": Route(
        "POST", lambda a: f"/v1/containers/{a['container']}/exec", HIDDEN, {"cmd": ["true"]}
    ),
    "containers.tty": Route("GET", lambda a: f"/v1/containers/{a['container']}/tty", HIDDEN),
    "containers.start_shell": Route("POST", lambda a: f"/v1/functions/{a['function']}/shell", HIDDEN),
    "streams.call_logs": Route("GET", lambda a: f"/v1/calls/{a['call']}/logs", HIDDEN),
    "streams.app_logs": Route("GET", lambda a: f"/v1/apps/{a['app']}/logs", HIDDEN),
    "streams.app_logs:by-name": Route("GET", lambda a: f"/v1/apps/{a['app_name']}/logs", HIDDEN),
    "deadletters.list_dead_letters": Route("GET", lambda a: "/dead-letter-queue?state=all", OWN),
    "deadletters.retry_dead_letter": Route("POST", lambda a: f"/dead-letter-queue/{a['dead_letter']}/retry", HIDDEN),
    "deploys.deploy": Route("POST", lambda a: "/v1/deployments", OWN, {"name": "b-deployed", "functions": []}),
    "deploys.lookup": Route("GET", lambda a: f"/v1/deployments/{a['deployed']}/functions/private", HIDDEN),
    "deploys.history": Route("GET", lambda a: f"/v1/deployments/{a['deployed']}/history", HIDDEN),
    "deploys.stop": Route("POST", lambda a: f"/v1/deployments/{a['deployed']}/stop", HIDDEN),
    "deploys.variant": Route(
        "POST", lambda a: f"/v1/functions/{a['function']}/variants", HIDDEN, {"options": {"timeout": 5}}
    ),
    "web.serve": Route("GET", lambda a: f"/web/{a['user']}/{a['deployed']}/private", PROXY),
    "objects.object_request": Route(
        "POST", lambda a: "/v1/objects", HIDDEN, {"kind": "dict", "op": "items", "id": "{dict}"}
    ),
    "objects.object_request:by-name": Route(
        "POST", lambda a: "/v1/objects", HIDDEN, {"kind": "queue", "op": "get_many", "name": "{queue_name}", "n": 5}
    ),
    "objects.object_request:volume": Route(
        "POST", lambda a: "/v1/objects", HIDDEN, {"kind": "volume", "op": "delete", "id": "{volume}"}
    ),
    "objects.object_request:list": Route("POST", lambda a: "/v1/objects", OWN, {"kind": "dict", "op": "list"}),
    "secrets.create_secret": Route("POST", lambda a: "/v1/secrets", OWN, {"name": "b-secret", "values": {"K": "b"}}),
    "secrets.list_secrets": Route("GET", lambda a: "/v1/secrets", OWN),
    "secrets.show_secret": Route("GET", lambda a: f"/v1/secrets/{a['secret']}", HIDDEN),
    "secrets.delete_secret": Route("DELETE", lambda a: f"/v1/secrets/{a['secret']}", HIDDEN),
    "volumes.list_entries": Route("GET", lambda a: f"/v1/volumes/{a['volume']}/entries", HIDDEN),
    "volumes.read_file": Route("GET", lambda a: f"/v1/volumes/{a['volume']}/files/a.txt", HIDDEN),
    "volumes.write_file": Route("PUT", lambda a: f"/v1/volumes/{a['volume']}/files/a.txt", HIDDEN, b"overwritten"),
    "volumes.remove_file": Route("DELETE", lambda a: f"/v1/volumes/{a['volume']}/files/a.txt", HIDDEN),
    "internal.get_volume_blob": Route("GET", lambda a: f"/internal/volume-blobs/{a['volume_sha']}", WORKER),
    "internal.put_volume_blob": Route("PUT", lambda a: f"/internal/volume-blobs/{_sha(b'x')}", WORKER, b"x"),
    "sandboxes.create_sandbox": Route(
        "POST", lambda a: "/v1/sandboxes", HIDDEN, {"image": "im-x", "volumes": {"/data": "{volume}"}}
    ),
    "sandboxes.create_sandbox:app": Route(
        "POST", lambda a: "/v1/sandboxes", HIDDEN, {"image": "im-x", "app_id": "{app}"}
    ),
    "sandboxes.list_sandboxes": Route("GET", lambda a: "/v1/sandboxes", OWN),
    "sandboxes.get_sandbox": Route("GET", lambda a: f"/v1/sandboxes/{a['sandbox']}", HIDDEN),
    "sandboxes.set_tags": Route("POST", lambda a: f"/v1/sandboxes/{a['sandbox']}/tags", HIDDEN, {"tags": {"k": "v"}}),
    "sandboxes.terminate": Route("POST", lambda a: f"/v1/sandboxes/{a['sandbox']}/terminate", HIDDEN),
    "sandboxes.exec_process": Route("POST", lambda a: f"/v1/sandboxes/{a['sandbox']}/exec", HIDDEN, {"cmd": ["id"]}),
    "sandboxes.get_process": Route("GET", lambda a: f"/v1/sandboxes/{a['sandbox']}/processes/ep", HIDDEN),
    "sandboxes.read_output": Route("GET", lambda a: f"/v1/sandboxes/{a['sandbox']}/processes/ep/output", HIDDEN),
    "sandboxes.write_stdin": Route(
        "POST", lambda a: f"/v1/sandboxes/{a['sandbox']}/processes/ep/stdin", HIDDEN, {"data": "eA=="}
    ),
    "sandboxes.snapshot": Route("POST", lambda a: f"/v1/sandboxes/{a['sandbox']}/snapshot", HIDDEN),
    "tunnels.proxy": Route("GET", lambda a: f"/v1/sandboxes/{a['sandbox']}/tunnels/8000/index.html", HIDDEN),
    "internal.cluster_settings": Route("GET", lambda a: "/internal/cluster", WORKER),
    "images.has_file": Route("HEAD", lambda a: "/v1/files/" + "0" * 64, SHARED),
    "images.missing_files": Route("POST", lambda a: "/v1/files/missing", SHARED),
    "images.put_file": Route("PUT", lambda a: "/v1/files/" + "0" * 64, SHARED),
    "images.create_image": Route("POST", lambda a: "/v1/images", SHARED),
    "images.get_image": Route("GET", lambda a: "/v1/images/im-x", SHARED),
}


def test_every_route_of_the_app_is_in_the_isolation_table(tmp_path: Path) -> None:
    app = create_app({"redis_url": "redis://127.0.0.1:1/0", "database_url": f"sqlite:///{tmp_path / 'mm.db'}"})
    app.extensions["minimodal"].db.dispose()
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    missing = endpoints - {name.split(":")[0] for name in ROUTES}
    assert missing == set(), f"add these endpoints to ROUTES in tests/test_isolation.py: {sorted(missing)}"
    assert {name.split(":")[0] for name in ROUTES} - endpoints == set(), "ROUTES names endpoints the app lacks"
    methods = {rule.endpoint: rule.methods or set() for rule in app.url_map.iter_rules()}
    for name, route in ROUTES.items():
        assert route.method in methods[name.split(":")[0]], f"{name}: the app has no {route.method}"


@contextlib.contextmanager
def _as_user(stack: Stack, token: str) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for key in ("MINIMODAL_HOME", "MINIMODAL_SERVER_URL", "MINIMODAL_MAX_PAYLOAD_SIZE"):
            patch.setenv(key, stack.env[key])
        patch.setenv("MINIMODAL_TOKEN", token)
        yield


@pytest.fixture(scope="module")
def owned(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """User A and one of each of its objects: an app, a function, a call with items and logs, a blob, a DLQ entry."""
    name = "iso-owner"
    token = stack.new_user(name)
    tmp = tmp_path_factory.mktemp("iso")
    with _as_user(stack, token):
        with basic.app.run(detach=True):
            fc = basic.chatty.spawn(2, 0.0)
            assert fc.get(timeout=60) == "done"
            items = basic.countdown.spawn(2)
            assert list(items.stream()) == [0, 1]
            ids = {
                "app": basic.app.app_id,
                "function": basic.chatty.object_id,
                "call": fc.object_id,
                "item_call": items.object_id,
            }
        webapps.app.deploy()
        d = minimodal.Dict.from_name("iso-dict", create_if_missing=True)
        d["k"] = "v"
        q = minimodal.Queue.from_name("iso-queue", create_if_missing=True)
        q.put("item")
        vol = minimodal.Volume.from_name("iso-volume", create_if_missing=True)
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"A's file"), "/a.txt")
        reply = requests.post(
            f"{stack.url}/v1/secrets",
            json={"name": "iso-secret", "values": {"ISO_KEY": "iso-value-of-a"}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert reply.status_code == 201, reply.text
        objects = {"dict": d.object_id, "queue": q.object_id, "volume": vol.object_id}
        with faults.app.run(detach=True):
            dead = faults.unless_flag.spawn(str(tmp / "flag"), str(tmp / "count"))
            with pytest.raises(ValueError):
                dead.get(timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    letters = wait_for(
        lambda: requests.get(f"{stack.url}/dead-letter-queue", headers=headers, timeout=10).json()["items"],
        30,
        "A's dead letter",
    )
    blob = requests.put(f"{stack.url}/v1/blobs", data=b"\x80\x05K\x07.", headers=headers, timeout=10).json()
    my_sandbox = _running_sandbox_of(stack, name)
    # A running container of A's (one started for a shell: it lives until stopped, whatever the tests take).
    sandbox = requests.post(f"{stack.url}/v1/functions/{ids['function']}/shell", headers=headers, timeout=180)
    assert sandbox.status_code == 200, sandbox.text
    container = sandbox.json()["container_id"]
    yield {
        **ids,
        "token": token,
        "user": name,
        "app_name": basic.app.name,
        "deployed": webapps.app.name,
        **objects,
        "queue_name": "iso-queue",
        "secret": "iso-secret",
        "volume_sha": _sha(b"A's file"),
        "blob": blob["blob_id"],
        "dead_letter": str(letters[0]["id"]),
        "args": _args(),
        "sandbox": my_sandbox,
        "container": container,
    }
    requests.post(f"{stack.url}/v1/containers/{container}/stop", headers=headers, timeout=30)


def _running_sandbox_of(stack: Stack, user_name: str) -> str:
    """A sandbox of A as the API records one that a worker runs (this stack's worker has no Docker engine;
    tests/test_sandbox.py checks the same routes against a real one)."""
    from sqlalchemy import select

    from mm_app.database import Database
    from mm_app.models import SandboxRecord, UserRecord

    db = Database(stack.env["MINIMODAL_DATABASE_URL"])
    sandbox_id = protocol.new_id("sb")
    try:
        with db.write() as session:
            user_id = session.scalar(select(UserRecord.id).where(UserRecord.name == user_name))
            session.add(SandboxRecord(id=sandbox_id, user_id=user_id, spec={"cmd": ["sleep", "1"]}, state="running"))
    finally:
        db.dispose()
    assert stack.redis_client is not None
    tunnels = '{"8000": {"host": "127.0.0.1", "port": 9, "encrypted": true}}'  # a port for tunnels.proxy to try
    stack.redis_client.hset(
        keyspace.sandbox_state_key(sandbox_id), mapping={"state": "running", "worker": "w", "tunnels": tunnels}
    )
    return sandbox_id


def _fill(value: Any, owned: dict[str, str]) -> Any:
    if isinstance(value, str):
        return owned.get(value.strip("{}"), value) if value.startswith("{") else value
    if isinstance(value, dict):
        return {k: _fill(v, owned) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, owned) for v in value]
    return value


def _secrets_of(owned: dict[str, str]) -> list[str]:
    """A's ids and names that must never appear in a reply to B."""
    keys = ("app", "function", "call", "item_call", "blob", "user", "token", "dict", "queue", "volume", "secret")
    keys += ("sandbox",)
    keys += ("container",)
    return [owned[k] for k in keys] + [
        "iso-dict",
        "iso-queue",
        "iso-volume",
        "iso-value-of-a",
        basic.chatty.__name__,
        "unless_flag",
    ]


@pytest.mark.parametrize("endpoint", sorted(name for name, r in ROUTES.items() if r.expect != SHARED))
def test_a_second_users_token_reaches_none_of_the_first_users_objects(
    stack: Stack, owned: dict[str, str], endpoint: str
) -> None:
    route = ROUTES[endpoint]
    intruder = stack.new_user(f"iso-b-{abs(hash(endpoint)) % 10**8}")
    path = route.path(owned)
    headers = {} if route.expect == PUBLIC else {"Authorization": f"Bearer {intruder}"}
    if endpoint in ("streams.stream_ws", "containers.tty"):  # WebSocket-only rules: plain HTTP gets 400
        with pytest.raises(HandshakeError) as info:
            WebSocket.connect(stack.url + path, headers)
        assert info.value.status == 404 and b"NotFoundError" in info.value.body
        return
    body = _fill(route.body, owned)
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    reply = requests.request(route.method, stack.url + path, headers=headers, timeout=30, **kwargs)
    if route.expect == HIDDEN:
        assert reply.status_code == 404, (path, reply.status_code, reply.text)
        assert reply.json()["error"]["type"] == "NotFoundError"
    elif route.expect == PROXY:
        assert reply.status_code == 401, (path, reply.status_code, reply.text)
        assert reply.json()["error"]["type"] == "AuthError"
    elif route.expect == WORKER:
        admin = {"Authorization": f"Bearer {stack.admin_token}"}
        for headers, status in ((None, 403), (admin, 403), ({}, 401), ({"Authorization": "Bearer not-a-token"}, 401)):
            if headers is not None:
                reply = requests.request(route.method, stack.url + path, headers=headers, timeout=30, **kwargs)
            assert reply.status_code == status, (path, headers, reply.status_code, reply.text)
            assert reply.json()["error"]["type"] == ("PermissionDeniedError" if status == 403 else "AuthError")
    elif route.expect == ADMIN:
        assert reply.status_code == 403, (path, reply.status_code, reply.text)
        assert reply.json()["error"]["type"] == "PermissionDeniedError"
    else:
        assert reply.status_code < 400 or (endpoint == "static" and reply.status_code == 404), (path, reply.text)
        text = reply.content.decode("utf-8", "replace")
        leaked = [s for s in _secrets_of(owned) if s in text]
        assert leaked == [], f"{endpoint} shows user A's {leaked} to user B"


def test_the_first_user_still_reaches_its_own_objects(stack: Stack, owned: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {owned['token']}"}
    for endpoint in (
        "calls.get_call",
        "streams.call_logs",
        "apps.get_function",
        "calls.get_blob",
        "streams.stream",
        "containers.get_container",
        "containers.container_logs",
    ):
        path = ROUTES[endpoint].path(owned)
        assert requests.get(stack.url + path, headers=headers, timeout=10).status_code == 200, path
    ws = WebSocket.connect(stack.url + ROUTES["streams.stream_ws"].path(owned), headers)
    ws.close()


def test_a_revoked_token_is_refused_at_once_even_on_an_open_websocket(stack: Stack) -> None:
    token = stack.new_user("iso-revoked")
    headers = {"Authorization": f"Bearer {token}"}
    with _as_user(stack, token), basic.app.run():
        fc = basic.sleep.spawn(0.1)
        ws = WebSocket.connect(f"{stack.url}/v1/calls/{fc.object_id}/ws", headers)
        assert ws.recv(timeout=30) is not None  # the socket works
        reply = requests.post(f"{stack.url}/v1/tokens/revoke", headers=headers, timeout=10)
        assert reply.status_code == 200, reply.text
        again = requests.get(f"{stack.url}/v1/me", headers=headers, timeout=10)
        assert again.status_code == 401 and again.json()["error"]["message"] == "invalid or revoked token"

        def closed() -> bool:
            return ws.recv(timeout=10) is None

        wait_for(closed, 30, "the open WebSocket of the revoked token to close")
        ws.close()


def test_an_admin_revokes_a_users_token_with_the_cli(stack: Stack) -> None:
    import subprocess
    import sys

    token = stack.new_user("iso-cli-revoked")
    env = {**stack.env, "MINIMODAL_TOKEN": stack.admin_token}
    result = subprocess.run(
        [sys.executable, "-m", "minimodal", "token", "revoke", "--user", "iso-cli-revoked"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "revoked the token of iso-cli-revoked" in result.stdout
    reply = requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 401


def test_every_api_process_sees_a_users_change_on_its_next_request(stack: Stack) -> None:
    """The API processes keep the users they authenticated lately (a Redis GET instead of a database
    read per request); a change through the API shows at once, in each of them."""
    token = stack.new_user("iso-cached")
    me = {"Authorization": f"Bearer {token}"}
    admin = {"Authorization": f"Bearer {stack.admin_token}"}

    def quotas() -> set[int]:  # new connections: the requests spread over the API's processes
        return {requests.get(f"{stack.url}/v1/me", headers=me, timeout=10).json()["quota"] for _ in range(12)}

    before = quotas()
    assert len(before) == 1
    for quota in (before.pop() + 3, 11, 12):
        reply = requests.patch(f"{stack.url}/v1/users/iso-cached", json={"quota": quota}, headers=admin, timeout=10)
        assert reply.status_code == 200, reply.text
        assert quotas() == {quota}
    assert requests.post(f"{stack.url}/v1/tokens/revoke", headers=me, timeout=10).status_code == 200
    assert {requests.get(f"{stack.url}/v1/me", headers=me, timeout=10).status_code for _ in range(12)} == {401}


def test_tokens_are_stored_as_digests_only(stack: Stack) -> None:
    from sqlalchemy import create_engine, text

    token = stack.new_user("iso-hashed")
    engine = create_engine(stack.env["MINIMODAL_DATABASE_URL"])
    with engine.connect() as connection:
        rows = connection.execute(text("select * from users where name = 'iso-hashed'")).mappings().all()
    engine.dispose()
    stored = " ".join(str(v) for v in rows[0].values())
    assert token not in stored
    import hashlib

    assert hashlib.sha256(token.encode()).hexdigest() in stored


def test_no_control_plane_process_ever_unpickles_user_data(stack: Stack, user: str, tmp_path: Path) -> None:
    """Arguments (inline, blob, retried) are unpickled by runners only; results and items by the client only."""
    import os

    import minimodal

    marker = str(tmp_path / "unpickled-by")
    app = minimodal.App("never-unpickled")
    fn = {
        name: app.function(serialized=True, name=name, **options)(getattr(hardening, name))
        for name, options in {
            "pid_after": {},
            "make_plant": {},
            "plants": {},
            "pid_after_failing_once": {"retries": minimodal.Retries(max_retries=2, initial_delay=0.1)},
        }.items()
    }
    with app.run():
        runners = {
            fn["pid_after"].remote(hardening.Plant(marker)),
            fn["pid_after"].remote(hardening.Plant(marker, pad=3 * 1024 * 1024)),  # over the inline size: a blob
            fn["pid_after_failing_once"].remote(hardening.Plant(marker), str(tmp_path / "count")),
        }
        fn["make_plant"].remote(marker)  # the result is unpickled here, by the client
        assert len(list(fn["plants"].remote_gen(marker, 2))) == 2  # so are generator items
    writers = Path(marker).read_text().split()
    control_plane = {str(p.pid) for p in stack.processes.values()}  # API, dispatcher (the scheduler), worker
    assert control_plane & set(writers) == set()
    assert set(writers) - {str(os.getpid())} <= {str(p) for p in runners}
    assert writers.count(str(os.getpid())) == 3  # one result, two items
    assert len(writers) == 3 + 4  # four arguments unpickled in runners: inline, blob, and the retried one twice
