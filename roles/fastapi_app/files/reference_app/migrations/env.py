"""Alembic environment: runs migrations over the app's own async engine."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

import database
from models import Base

target_metadata = Base.metadata
if context.config.config_file_name:
    fileConfig(context.config.config_file_name)


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    async with database.engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await database.engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against the database")
asyncio.run(run_async_migrations())
