"""Migrations over DATABASE_URL (psycopg), in a version table of their own: the database may
hold other apps' Alembic history."""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

fileConfig(context.config.config_file_name)

engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, version_table="notes_alembic_version")
    with context.begin_transaction():
        context.run_migrations()
