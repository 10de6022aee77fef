"""Migrations over DATABASE_URL (psycopg), in a version table of their own: the database may
hold other apps' Alembic history. It imports the app's own package, as `uv sync` lets it
(alembic.ini puts nothing on the path)."""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from app.models import Base

fileConfig(context.config.config_file_name)

engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table="notes_alembic_version")
    with context.begin_transaction():
        context.run_migrations()
