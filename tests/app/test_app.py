"""The reference app against a real PostgreSQL, through its ASGI interface."""

import logging
import os
import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.asyncio(loop_scope="session")


def user_body(unique, **over):
    tag = unique()
    body = {"username": f"user_{tag}", "email": f"user_{tag}@example.com", "password": "s3cret-pass"}
    body.update(over)
    return body


async def test_migration_is_idempotent(migrated):
    first, second = migrated
    assert "Running upgrade  -> 0001" in first.stderr
    assert "Running upgrade" not in second.stderr


async def test_health_reports_connected_database(client):
    r = await client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["database"] == "connected"
    assert isinstance(body["total_users"], int)


async def test_create_then_get_user(client, unique):
    body = user_body(unique)
    r = await client.post("/users/", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "username", "email", "is_active"}
    assert created["username"] == body["username"]
    assert created["is_active"] is True
    r = await client.get(f"/users/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created


async def test_password_is_stored_as_argon2_hash(client, app_module, unique):
    body = user_body(unique)
    r = await client.post("/users/", json=body)
    assert r.status_code == 201
    async with app_module.database.engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT hashed_password FROM users WHERE id = :id"), {"id": r.json()["id"]}
        )
    assert stored.startswith("$argon2id$")
    # argon2-cffi's default cost when the environment sets none.
    assert "$m=65536,t=3,p=4$" in stored
    assert body["password"] not in stored
    assert app_module.hasher.verify(stored, body["password"])


async def test_the_argon2_cost_comes_from_the_environment(app_dir, database_url, migrated):
    env = dict(os.environ, FASTPG_DATABASE_URL=database_url, APP_ARGON2_TIME_COST="1",
               APP_ARGON2_MEMORY_KIB="8192", APP_ARGON2_PARALLELISM="1")
    done = subprocess.run([sys.executable, "-c", "import main; print(main.hasher.hash('x'))"], cwd=app_dir,
                          env=env, capture_output=True, text=True, check=True)
    assert "$m=8192,t=1,p=1$" in done.stdout


async def test_health_counts_users(client, unique):
    before = (await client.get("/health")).json()["total_users"]
    assert (await client.post("/users/", json=user_body(unique))).status_code == 201
    assert (await client.get("/health")).json()["total_users"] == before + 1


@pytest.mark.parametrize("field", ["username", "email"])
async def test_duplicate_is_rejected_with_400(client, unique, field):
    first = user_body(unique)
    assert (await client.post("/users/", json=first)).status_code == 201
    second = user_body(unique, **{field: first[field]})
    r = await client.post("/users/", json=second)
    assert r.status_code == 400
    assert "already registered" in r.json()["detail"]


@pytest.mark.parametrize(
    "over",
    [{"email": "not-an-email"}, {"password": "short"}, {"username": "x"}, {"username": "bad name!"}],
)
async def test_invalid_input_is_rejected_with_422(client, unique, over):
    r = await client.post("/users/", json=user_body(unique, **over))
    assert r.status_code == 422


async def test_list_users_pages(client, unique):
    for _ in range(3):
        assert (await client.post("/users/", json=user_body(unique))).status_code == 201
    everyone = (await client.get("/users/", params={"limit": 1000})).json()
    assert len(everyone) >= 3
    page = (await client.get("/users/", params={"skip": 1, "limit": 2})).json()
    assert [u["id"] for u in page] == [u["id"] for u in everyone[1:3]]
    assert (await client.get("/users/", params={"limit": 0})).status_code == 422
    assert (await client.get("/users/", params={"skip": -1})).status_code == 422


async def test_missing_user_is_404(client):
    r = await client.get("/users/987654321")
    assert r.status_code == 404


async def test_pool_stats_match_database_py(client):
    r = await client.get("/pool-stats")
    assert r.status_code == 200
    stats = r.json()
    assert stats["pool_size"] == 3
    assert stats["max_overflow"] == 2
    assert {"checked_in", "checked_out", "overflow"} <= set(stats)
    # One process here: every worker is this one.
    assert [w["pid"] for w in stats["workers"]] == [stats["pid"]]


async def test_process_time_header(client):
    r = await client.get("/pool-stats")
    assert float(r.headers["X-Process-Time"]) >= 0


async def test_pool_use_above_80_percent_logs_warning(client, app_module, caplog, monkeypatch):
    monkeypatch.setattr(app_module, "POOL_WARN_EVERY", app_module.metrics.Ticker(0))
    engine = app_module.database.engine
    held = [await engine.connect() for _ in range(5)]  # 5 of 3 + 2 in use
    try:
        with caplog.at_level(logging.WARNING, logger="fastpg.app"):
            r = await client.get("/pool-stats")
        assert r.json()["checked_out"] == 5
    finally:
        for conn in held:
            await conn.close()
    assert any("connection pool 100% used (5 of 5 checked out)" in m for m in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastpg.app"):
        await client.get("/pool-stats")
    assert not caplog.messages


async def test_pool_warning_is_rate_limited(app_module, caplog):
    ticker = app_module.metrics.Ticker(3600)
    assert ticker.due() and not ticker.due()


async def test_metrics_count_requests_by_route_template_and_status(client):
    def count(text, route, status):
        for line in text.splitlines():
            if line.startswith("fastpg_http_requests_total{") and f'route="{route}"' in line \
                    and f'status="{status}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = (await client.get("/metrics")).text
    for user_id in (987654321, 987654322, 987654323):
        assert (await client.get(f"/users/{user_id}")).status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    # The route's template, not the raw path: one series whatever the id.
    assert count(r.text, "/users/{user_id}", 404) - count(before, "/users/{user_id}", 404) == 3
    assert "fastpg_http_request_duration_seconds_bucket{" in r.text
    assert "fastpg_pool_size 3.0" in r.text  # one process here: no pid label
    assert "fastpg_pool_checkout_wait_seconds_count" in r.text
    assert "fastpg_app_healthy 1.0" in r.text


@pytest.fixture
async def unreachable_database(app_module, monkeypatch):
    """The app's read sessions pointed at a loopback port nothing listens on (a real attempt)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker  # noqa: PLC0415

    from conftest import _free_port  # noqa: PLC0415

    dead = create_async_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{_free_port()}/none")
    monkeypatch.setattr(app_module, "ReadSessionLocal", async_sessionmaker(dead))
    monkeypatch.setattr(app_module, "ReplicaSessionLocal", async_sessionmaker(dead))
    monkeypatch.setattr(app_module.database, "SessionLocal", async_sessionmaker(dead))
    yield
    await dead.dispose()


async def test_a_database_that_never_answers_fails_the_connection_at_the_connect_timeout(app_module):
    """A server that takes the TCP connection and never answers (a host going away behind a
    proxy): the connection fails after database.py's CONNECT_TIMEOUT, not asyncpg's minute."""
    limit = app_module.database.CONNECT_TIMEOUT
    assert limit == 2  # conftest's fastapi_app_db_connect_timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        engine = app_module.database._engine(f"postgresql+asyncpg://nobody@127.0.0.1:{silent.getsockname()[1]}/none")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        took = time.monotonic() - started
        await engine.dispose()
    assert limit <= took < limit + 1.5, took


async def test_health_is_503_when_database_unreachable(client, unreachable_database):
    r = await client.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "unhealthy", "database": "disconnected"}


async def test_a_write_without_its_database_is_503_with_when_to_try_again(client, unreachable_database):
    r = await client.post("/users/", json={"username": "nodb", "email": "nodb@example.com", "password": "password-1"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json() == {"detail": "database unavailable, try again"}


async def test_a_server_shutting_down_or_demoted_is_unavailable_not_an_error(app_module):
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    class Orig(Exception):
        def __init__(self, sqlstate):
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    for state in ("57P03", "57P01", "25006", "08006"):
        assert app_module.unavailable(DBAPIError("INSERT", {}, Orig(state))), state
    # A write the server refused on its merits is the request's error, not the database's.
    for state in ("23505", "22001", None):
        assert not app_module.unavailable(DBAPIError("INSERT", {}, Orig(state))), state


async def test_a_read_on_the_replicas_is_tried_once_more_on_a_lost_connection(app_module, monkeypatch):
    """A read whose connection was cut (a replica promoted or restarted) is made again on a new one."""
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    calls = []

    async def query(session):
        calls.append(1)
        if len(calls) == 1:
            raise DBAPIError("SELECT 1", {}, ConnectionResetError("cut"), connection_invalidated=True)
        return "answered"

    assert await app_module.replica_read(query) == "answered" and len(calls) == 2


async def test_metrics_report_an_unreachable_database(client, unreachable_database):
    r = await client.get("/metrics")
    assert r.status_code == 200  # the metrics still come, saying so
    assert "fastpg_app_healthy 0.0" in r.text


async def test_connections_the_server_closed_in_the_pool_fail_no_request(client, app_module):
    """Without pre-ping: connections the server ended while idle in the pool (as a restart does)
    are replaced at checkout, and no request meets them."""
    import asyncio  # noqa: PLC0415

    for _ in range(6):  # the pool holds connections now
        assert (await client.get("/health")).status_code == 200
    assert app_module.pool_stats()["checked_in"] > 0
    engine = create_async_engine(str(app_module.database.engine.url.render_as_string(hide_password=False)))
    try:
        async with engine.connect() as conn:
            ended = await conn.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"))
    finally:
        await engine.dispose()
    assert ended > 0
    await asyncio.sleep(0.2)  # the event loop reads the servers' goodbyes
    statuses = [(await client.get(path)).status_code for path in ("/health", "/users/?limit=5") * 5]
    assert statuses == [200] * 10


async def test_metrics_answer_at_once_when_the_pool_is_full(client, app_module):
    """A scrape never waits for a pooled connection (pool_timeout): with every connection
    checked out it answers within about a second, and a full pool is not called unhealthy."""
    import time  # noqa: PLC0415

    assert "fastpg_app_healthy 1.0" in (await client.get("/metrics")).text
    engine = app_module.database.engine
    held = [await engine.connect() for _ in range(5)]  # all of 3 + 2
    try:
        start = time.monotonic()
        r = await client.get("/metrics")
        took = time.monotonic() - start
    finally:
        for conn in held:
            await conn.close()
    assert r.status_code == 200 and took < 2.5
    assert "fastpg_pool_checked_out 5.0" in r.text
    assert "fastpg_app_healthy 1.0" in r.text
