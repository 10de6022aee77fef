"""Initial data, run as a pre-start command by its path (python app/seed.py): idempotent, over
the psycopg URL in DATABASE_URL. Imports the app's own package like the app does."""

import os

from sqlalchemy import create_engine, text

from app.models import Note

engine = create_engine(os.environ["DATABASE_URL"])
with engine.begin() as conn:
    conn.execute(text(f"INSERT INTO {Note.__tablename__} (text) VALUES ('welcome') ON CONFLICT (text) DO NOTHING"))
    print("seeded:", conn.execute(text("SELECT count(*) FROM notes")).scalar_one(), "notes")
