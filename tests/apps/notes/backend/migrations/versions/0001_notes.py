"""Create notes."""

import sqlalchemy as sa
from alembic import op

revision = "0001_notes"
down_revision = None


def upgrade():
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.String(200), nullable=False, unique=True),
    )


def downgrade():
    op.drop_table("notes")
