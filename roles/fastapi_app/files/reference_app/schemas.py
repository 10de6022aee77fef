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
    email: EmailStr
    is_active: bool


class PoolStats(BaseModel):
    pool_class: str
    pool_size: int
    checked_in: int
    checked_out: int
    overflow: int
    max_overflow: int
    invalid: int | None = None
