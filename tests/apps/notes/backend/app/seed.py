"""Initial data, run as a pre-start command: idempotent, over the psycopg URL in DATABASE_URL."""

import os

from sqlalchemy import create_engine, text

engine = create_engine(os.environ["DATABASE_URL"])
with engine.begin() as conn:
    conn.execute(text("INSERT INTO notes (text) VALUES ('welcome') ON CONFLICT (text) DO NOTHING"))
    print("seeded:", conn.execute(text("SELECT count(*) FROM notes")).scalar_one(), "notes")
