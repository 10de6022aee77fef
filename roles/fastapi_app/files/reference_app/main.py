"""fastpg reference app: health, users API, pool stats and pool monitoring.

Pool settings live in database.py, which fastpg templates from the inventory; the
connection URL and password arrive through the environment (see database.py).
"""

import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated

from argon2 import PasswordHasher
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

import database
from models import User
from schemas import PoolStats, UserCreate, UserOut

log = logging.getLogger("fastpg.app")
hasher = PasswordHasher()

# Share of the pool (pool_size + max_overflow) in use above which each request logs a warning.
POOL_WARN_RATIO = 0.8


@asynccontextmanager
async def lifespan(_: FastAPI):
    yield
    await database.engine.dispose()


app = FastAPI(title="fastpg reference app", lifespan=lifespan)
Session = Annotated[AsyncSession, Depends(database.get_session)]


def pool_stats() -> PoolStats:
    pool = database.engine.pool
    # NullPool and friends have no size; report zeros rather than fail.
    size = pool.size() if hasattr(pool, "size") else 0
    return PoolStats(
        pool_class=type(pool).__name__,
        pool_size=size,
        checked_in=pool.checkedin() if hasattr(pool, "checkedin") else 0,
        checked_out=pool.checkedout() if hasattr(pool, "checkedout") else 0,
        overflow=pool.overflow() if hasattr(pool, "overflow") else 0,
        max_overflow=database.MAX_OVERFLOW,
        invalid=pool.invalid() if callable(getattr(pool, "invalid", None)) else None,
    )


@app.middleware("http")
async def monitor_pool(request: Request, call_next):
    start = time.perf_counter()
    response = await call_next(request)
    response.headers["X-Process-Time"] = f"{time.perf_counter() - start:.6f}"
    stats = pool_stats()
    capacity = stats.pool_size + max(stats.max_overflow, 0)
    if capacity and stats.checked_out / capacity > POOL_WARN_RATIO:
        log.warning(
            "connection pool %d%% used (%d of %d checked out) on %s %s",
            100 * stats.checked_out // capacity,
            stats.checked_out,
            capacity,
            request.method,
            request.url.path,
        )
    return response


@app.get("/health")
async def health(session: Session):
    try:
        total = await session.scalar(select(func.count()).select_from(User))
    except (SQLAlchemyError, OSError) as exc:
        log.error("health check: database unreachable: %s", exc)
        return JSONResponse(
            status_code=503,
            content={"status": "unhealthy", "database": "disconnected"},
        )
    return {"status": "healthy", "database": "connected", "total_users": total}


@app.post("/users/", response_model=UserOut, status_code=201)
async def create_user(body: UserCreate, session: Session):
    user = User(
        username=body.username,
        email=str(body.email),
        hashed_password=hasher.hash(body.password),
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise HTTPException(status_code=400, detail="username or email already registered")
    await session.refresh(user)
    return user


@app.get("/users/", response_model=list[UserOut])
async def list_users(
    session: Session,
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    rows = await session.scalars(select(User).order_by(User.id).offset(skip).limit(limit))
    return rows.all()


@app.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: int, session: Session):
    user = await session.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="user not found")
    return user


@app.get("/pool-stats", response_model=PoolStats)
async def get_pool_stats():
    return pool_stats()
