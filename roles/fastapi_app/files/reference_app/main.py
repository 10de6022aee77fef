"""fastpg reference app: health, users API, pool stats, Prometheus metrics.

Pool settings live in database.py, which fastpg templates from the inventory; the
connection URL and password arrive through the environment (see database.py).
"""

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Annotated

from argon2 import PasswordHasher
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import database
import metrics
from models import User
from schemas import Health, PoolStats, UserCreate, UserOut, WorkerPool

log = logging.getLogger("fastpg.app")
# argon2-cffi's defaults (RFC 9106's low-memory profile) unless the environment sets the cost:
# a test stack on a small machine may lower it (fastapi_app_environment), never a production one.
_argon2 = PasswordHasher()
hasher = PasswordHasher(
    time_cost=int(os.environ.get("APP_ARGON2_TIME_COST", _argon2.time_cost)),
    memory_cost=int(os.environ.get("APP_ARGON2_MEMORY_KIB", _argon2.memory_cost)),
    parallelism=int(os.environ.get("APP_ARGON2_PARALLELISM", _argon2.parallelism)),
)

# Share of the pool (pool_size + max_overflow) in use above which a worker logs a warning,
# at most once per POOL_WARN_EVERY seconds (the metrics carry the detail).
POOL_WARN_RATIO = 0.8
POOL_WARN_EVERY = metrics.Ticker(10.0)
# How often each worker publishes its pool gauges.
POOL_PUBLISH_SECONDS = 1.0


def pool_stats() -> dict:
    pool = database.engine.pool
    # NullPool and friends have no size; report zeros rather than fail.
    size = pool.size() if hasattr(pool, "size") else 0
    return {
        "pool_class": type(pool).__name__,
        "pool_size": size,
        "capacity": size + max(database.MAX_OVERFLOW, 0) if size else 0,
        "checked_in": pool.checkedin() if hasattr(pool, "checkedin") else 0,
        "checked_out": pool.checkedout() if hasattr(pool, "checkedout") else 0,
        "overflow": pool.overflow() if hasattr(pool, "overflow") else 0,
        "max_overflow": database.MAX_OVERFLOW,
    }


def watch_pool() -> dict:
    """Publishes this worker's pool gauges; warns when the pool is nearly exhausted."""
    stats = pool_stats()
    metrics.set_pool({"size": stats["pool_size"], "capacity": stats["capacity"], "checked_out": stats["checked_out"],
                      "checked_in": stats["checked_in"], "overflow": stats["overflow"]})
    capacity = stats["capacity"]
    if capacity and stats["checked_out"] / capacity > POOL_WARN_RATIO and POOL_WARN_EVERY.due():
        log.warning("connection pool %d%% used (%d of %d checked out) in worker %d",
                    100 * stats["checked_out"] // capacity, stats["checked_out"], capacity, os.getpid())
    return stats


# The other workers' figures change once per POOL_PUBLISH_SECONDS: reading them more often
# would only cost time.
OTHER_WORKERS = metrics.Cached(metrics.workers_pool, POOL_PUBLISH_SECONDS)


async def _publish_pool():
    while True:
        watch_pool()
        await asyncio.sleep(POOL_PUBLISH_SECONDS)


@asynccontextmanager
async def lifespan(_: FastAPI):
    publisher = asyncio.create_task(_publish_pool())
    yield
    publisher.cancel()
    await database.engine.dispose()


class Instrument:
    """Pure ASGI middleware: request count and latency by route template, X-Process-Time.

    (Starlette's @app.middleware("http") wraps every request in extra tasks and streams;
    this costs a function call.)
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def timed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                took = time.perf_counter() - start
                message["headers"] = [*message.get("headers", ()), (b"x-process-time", b"%.6f" % took)]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            metrics.REQUESTS.labels(method, template, str(status)).inc()
            metrics.LATENCY.labels(method, template).observe(time.perf_counter() - start)


# FastAPI's own OpenTelemetry hooks are off: /metrics is Prometheus, and with no OTel provider
# they would only check for one on every request.
app = FastAPI(title="fastpg reference app", lifespan=lifespan,
              telemetry={"tracing": False, "metrics": False, "logs": False})
app.add_middleware(Instrument)


# Reads need no transaction: on an AUTOCOMMIT connection SQLAlchemy sends no BEGIN and no
# ROLLBACK, so a read is one round trip to the database instead of three.
ReadSessionLocal = async_sessionmaker(
    database.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
)
# The users API's reads may lag a moment: on the replicas when there are (database.read_engine).
ReplicaSessionLocal = async_sessionmaker(
    database.read_engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
)


async def replica_read(query):
    """`await query(session)` on the replicas' pool; once more on a new connection when the first
    was cut (a replica restarted or promoted, HAProxy closing its sessions): a read is safe to
    repeat, and the pool has dropped the dead connection meanwhile."""
    for last in (False, True):
        try:
            async with opened(ReplicaSessionLocal) as session:
                return await query(session)
        except (DBAPIError, OSError) as exc:
            if last or not (isinstance(exc, OSError) or exc.connection_invalidated):
                raise
            log.warning("read on a lost connection, once more: %s", exc)


# SQLSTATEs that say the server cannot take a write now (a switchover, a failover, a restart),
# not that the write was wrong: the server shutting down or starting (57P01 to 57P03), a
# connection lost (class 08), a primary demoted meanwhile (25006, read-only transaction).
UNAVAILABLE_SQLSTATES = ("57P01", "57P02", "57P03", "25006")


def unavailable(exc: Exception) -> bool:
    """The database was out, not the request at fault: worth a 503 and a later try."""
    if isinstance(exc, OSError):
        return True
    state = getattr(exc.orig, "sqlstate", None) or ""
    return exc.connection_invalidated or state.startswith("08") or state in UNAVAILABLE_SQLSTATES


class opened:
    """`async with opened(factory) as session`: a session, its wait for a pooled connection measured.

    Opened in the endpoint rather than through a FastAPI yield dependency: that costs about a
    fifth of a request's CPU here (its exit stack and cancel scopes), measured under load.
    """

    def __init__(self, factory):
        self.session = factory()

    async def __aenter__(self) -> AsyncSession:
        start = time.perf_counter()
        try:
            await self.session.connection()
        except PoolTimeout:
            metrics.CHECKOUT_TIMEOUTS.inc()
            await self.session.close()
            raise
        except (SQLAlchemyError, OSError):
            pass  # the endpoint meets the same error and answers for it
        else:
            metrics.CHECKOUT_WAIT.observe(time.perf_counter() - start)
        return self.session

    async def __aexit__(self, *exc):
        await self.session.close()


# Statements built once: SQLAlchemy then finds them in its compiled cache without building
# and hashing a new statement tree per request. The count is on the table, not the entity,
# so it takes the Core path (no ORM loading for one number).
COUNT_USERS = select(func.count()).select_from(User.__table__)
PING = select(1)
LIST_USERS = select(User).order_by(User.id).offset(bindparam("skip")).limit(bindparam("limit"))


@app.get("/health", response_model=Health)
async def health():
    try:
        async with opened(ReadSessionLocal) as session:
            total = await session.scalar(COUNT_USERS)
    except (SQLAlchemyError, OSError) as exc:
        log.error("health check: database unreachable: %s", exc)
        return JSONResponse(
            status_code=503,
            content={"status": "unhealthy", "database": "disconnected"},
        )
    return {"status": "healthy", "database": "connected", "total_users": total}


@app.post("/users/", response_model=UserOut, status_code=201)
async def create_user(body: UserCreate):
    user = User(
        username=body.username,
        email=str(body.email),
        # Off the event loop: a hash takes a fifth of a second of CPU, which would stall every
        # request this worker serves meanwhile.
        hashed_password=await asyncio.to_thread(hasher.hash, body.password),
    )
    try:
        async with opened(database.SessionLocal) as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise HTTPException(status_code=400, detail="username or email already registered")
            await session.refresh(user)
            return user
    except (DBAPIError, OSError) as exc:
        # The primary is out (a failover) or its connection was cut: not done, say so, and when
        # to try again. A commit whose answer was lost may have been made: a retry then meets
        # the unique username (400).
        if not unavailable(exc):
            raise
        log.error("write: database unavailable: %s", exc)
        return JSONResponse(status_code=503, content={"detail": "database unavailable, try again"},
                            headers={"Retry-After": "1"})


@app.get("/users/", response_model=list[UserOut])
async def list_users(
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    async def query(session):
        return (await session.scalars(LIST_USERS, {"skip": skip, "limit": limit})).all()

    return await replica_read(query)


@app.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: int):
    user = await replica_read(lambda session: session.get(User, user_id))
    if user is None:
        raise HTTPException(status_code=404, detail="user not found")
    return user


@app.get("/pool-stats", response_model=PoolStats)
async def get_pool_stats():
    """This worker's pool, and every worker's as last published (within POOL_PUBLISH_SECONDS)."""
    own = watch_pool()
    workers = dict(OTHER_WORKERS.read())
    workers[os.getpid()] = {"size": own["pool_size"], **own}
    return {**own, "pid": os.getpid(),
            "workers": [WorkerPool(pid=pid, pool_size=w["size"], checked_in=w["checked_in"],
                                   checked_out=w["checked_out"], overflow=w["overflow"])
                        for pid, w in sorted(workers.items())]}


@app.get("/metrics", include_in_schema=False)
async def get_metrics():
    stats = watch_pool()
    try:
        # Never longer than a second: a scrape must not wait out pool_timeout.
        await asyncio.wait_for(_ping(), timeout=1)
        metrics.HEALTHY.set(1)
    except TimeoutError:  # before OSError, its base class
        # A full pool is busy, not unhealthy (the pool alerts say so); otherwise the database
        # did not answer in time.
        if not stats["capacity"] or stats["checked_out"] < stats["capacity"]:
            metrics.HEALTHY.set(0)
    except (SQLAlchemyError, OSError) as exc:
        log.error("metrics: database unreachable: %s", exc)
        metrics.HEALTHY.set(0)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


async def _ping():
    async with opened(ReadSessionLocal) as session:
        await session.execute(PING)
