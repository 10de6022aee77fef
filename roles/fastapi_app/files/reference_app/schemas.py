"""Request and response bodies (pydantic v2)."""

from pydantic import BaseModel, ConfigDict, EmailStr, Field


class UserCreate(BaseModel):
    username: str = Field(min_length=3, max_length=50, pattern=r"^[A-Za-z0-9_.-]+$")
    email: EmailStr
    password: str = Field(min_length=8, max_length=128)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    # Checked on the way in (UserCreate); checking stored values again on every answer cost a
    # quarter of GET /users/ in the profile.
    email: str
    is_active: bool


class Health(BaseModel):
    status: str
    database: str
    total_users: int


class WorkerPool(BaseModel):
    pid: int
    pool_size: int
    checked_in: int
    checked_out: int
    overflow: int


class PoolStats(BaseModel):
    """The answering worker's pool (pid), and every live worker's in `workers`."""

    pool_class: str
    pool_size: int
    checked_in: int
    checked_out: int
    overflow: int
    max_overflow: int
    pid: int
    workers: list[WorkerPool]
