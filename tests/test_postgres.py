"""The database-facing tests again, with a real PostgreSQL (Debian's package) as the metadata store.

The tests are imported from their modules, and this module's ``stack`` and ``beat_stack`` fixtures
(stacks whose MINIMODAL_DATABASE_URL is a database of the session's PostgreSQL cluster) replace the
SQLite ones for them. ``make test-postgres`` runs whole modules on PostgreSQL instead
(``MINIMODAL_TEST_DATABASE=postgres`` switches conftest's stacks).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from redis import Redis
from sqlalchemy import select

from mm_app.database import Database
from mm_app.models import AppRecord, FunctionRecord, UserRecord
from tests.conftest import PostgresServer, RedisServer, Stack, start_redis, start_stack, stop_process
from tests.test_deploy import (  # noqa: F401 - collected here, on PostgreSQL
    test_a_deployed_function_is_called_by_name_from_a_separate_process,
    test_redeploy_replaces_the_version_and_calls_in_flight_finish_on_the_old_one,
)
from tests.test_faults import (  # noqa: F401
    test_a_dead_letter_cannot_be_retried_twice_or_by_another_user,
    test_a_function_that_fails_twice_then_succeeds_returns_its_value,
    test_an_always_failing_call_ends_in_the_dead_letter_queue_and_a_retry_completes_it,
)
from tests.test_objects import test_dict_from_the_client_behaves_like_a_dict  # noqa: F401
from tests.test_remote import (  # noqa: F401
    test_every_input_of_a_batched_map_is_recorded_completed,
    test_map_returns_results_in_input_order,
    test_remote_returns_the_value_computed_on_a_worker,
    test_spawn_then_get_and_gather,
)
from tests.test_schedules import (  # noqa: F401
    beat_user,
    test_a_period_runs_on_time_as_ordinary_calls_by_one_beat_and_stops_with_the_app,
)
from tests.test_secrets import test_a_secret_reaches_the_function_and_appears_in_no_response_or_log  # noqa: F401

REDIS_DB = 10  # this module's stack's Redis database on the session's redis-server


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, postgres_server: PostgresServer, tmp_path_factory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}").flushdb()
    database_url = postgres_server.new_database("mm_postgres_tests")
    stack = start_stack(
        redis_server, tmp_path_factory.mktemp("pghome"), runtime="process", db=REDIS_DB, database_url=database_url
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def beat_stack(postgres_server: PostgresServer, tmp_path_factory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    redis = start_redis(tmp_path_factory.mktemp("pg-beat-redis"))
    try:
        database_url = postgres_server.new_database("mm_postgres_beat")
        stack = start_stack(
            redis, tmp_path_factory.mktemp("pg-beat-home"), runtime="process", db=0, database_url=database_url
        )
        try:
            stack.spawn("beat", "beat")
            stack.spawn("beat2", "beat")
            yield stack
        finally:
            stack.stop()
    finally:
        stop_process(redis.process)


def test_the_stack_here_really_stores_its_metadata_in_postgresql(stack: Stack, user: str) -> None:
    assert stack.env["MINIMODAL_DATABASE_URL"].startswith("postgresql+psycopg://")
    db = Database(stack.env["MINIMODAL_DATABASE_URL"])
    try:
        assert db.engine.dialect.name == "postgresql"
        with db.read() as session:
            assert session.scalar(select(UserRecord).where(UserRecord.name == "admin")) is not None
    finally:
        db.dispose()


def test_datetimes_come_back_in_utc_and_json_columns_round_trip(postgres_server: PostgresServer) -> None:
    db = Database(postgres_server.new_database("mm_postgres_models"))
    try:
        db.create_all()
        db.create_all()  # twice: a second process's create_all finds the tables and changes nothing
        with db.write() as session:
            user = UserRecord(name="tz", token_hash="h" * 64, quota=1, weight=1)
            session.add(user)
            session.flush()
            session.add(AppRecord(id="ap-tz", user_id=user.id, name="tz"))
            session.flush()
            options = {"retries": {"max_retries": 2}, "gpu": None, "tags": ["a", "b"]}
            session.add(
                FunctionRecord(
                    id="fu-tz", app_id="ap-tz", user_id=user.id, tag="f", code=b"x", code_hash="0" * 64, options=options
                )
            )
        with db.read() as session:
            app = session.get(AppRecord, "ap-tz")
            function = session.get(FunctionRecord, "fu-tz")
            assert app is not None and function is not None
            assert app.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
            assert abs((datetime.now(UTC) - app.created_at).total_seconds()) < 600
            assert function.options == options
    finally:
        db.dispose()
