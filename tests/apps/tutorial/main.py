"""The app of the install script's tutorial, as its readers write it: a flat layout whose main.py
imports the tutorial's names from database.py (here, the one fastpg writes)."""

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from database import Base, get_database_session, engine


class Item(Base):
    __tablename__ = "tutorial_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health(db: AsyncSession = Depends(get_database_session)):
    await db.execute(select(1))
    return {"status": "ok"}


@app.post("/items/")
async def create_item(name: str, db: AsyncSession = Depends(get_database_session)):
    item = Item(name=name)
    db.add(item)
    await db.commit()
    return {"id": item.id, "name": item.name}


@app.get("/items/")
async def list_items(db: AsyncSession = Depends(get_database_session)):
    return [{"id": i.id, "name": i.name} for i in (await db.scalars(select(Item).order_by(Item.id)))]
