"""The notes service, written the way FastAPI + SQLAlchemy async tutorials write it."""

import hashlib

from fastapi import Depends, FastAPI
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app import config
from app.database import get_db
from app.models import Note

app = FastAPI(title="notes")


@app.get("/healthz")
async def healthz(db: AsyncSession = Depends(get_db)):
    await db.execute(text("SELECT 1"))
    return {"ok": True}


@app.get("/greeting")
async def greeting():
    # Proves the secret arrived without showing it.
    digest = hashlib.sha256(config.SECRET_KEY.encode()).hexdigest()[:12]
    return {"greeting": config.GREETING, "database": config.DATABASE_NAME, "secret_sha256_12": digest}


@app.get("/notes")
async def notes(db: AsyncSession = Depends(get_db)):
    rows = (await db.scalars(select(Note).order_by(Note.id))).all()
    return [{"id": n.id, "text": n.text} for n in rows]
