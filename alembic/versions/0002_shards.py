"""Fan-out: a search runs as shard jobs that claim its runs (``search_runs``); tenants get a
cap on concurrent runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 20:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("max_concurrent_runs", sa.Integer(), nullable=False, server_default="16")
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("shard", sa.Integer(), nullable=False, server_default="0"))
        batch.create_unique_constraint("uq_jobs_search_shard", ["search_id", "shard"])
    op.create_table(
        "search_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("search_id", sa.Uuid(), nullable=False),
        sa.Column("unit", sa.String(length=300), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("search_id", "unit", name="uq_search_runs_unit"),
    )
    op.create_index("ix_search_runs_search_id", "search_runs", ["search_id"])


def downgrade() -> None:
    op.drop_index("ix_search_runs_search_id", table_name="search_runs")
    op.drop_table("search_runs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_search_shard", type_="unique")
        batch.drop_column("shard")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_concurrent_runs")
