"""Our tables (SQLAlchemy 2). Optuna's tables are Optuna's: another schema or SQLite file.

- ``tenants`` own API keys and searches, with their quotas.
- ``api_keys`` store only a SHA-256 of the key (keys are 256-bit random, so a plain hash is
  safe) and a short prefix to find the row; comparison is constant-time.
- ``searches`` hold the spec, status, progress and, once finished, ranking + recommendation.
- ``search_trials`` are the study's finished trials, copied by the worker.
- ``search_events`` are the SSE stream (their id is the ``Last-Event-ID``).
- ``jobs`` are the work units of the dispatchers: one per *shard* of a search (a process
  that joins the search's study and runs whatever runs are still unclaimed); PostgreSQL
  clusters hand them to procrastinate.
- ``search_runs`` are the claims on a search's runs (a baseline seed, a joint seed, a
  candidate-seed pair, an optuna trial slot): one row per run, owned by the shard job that
  runs it, so a run never executes twice at once and a dead shard's runs are taken over.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.statuses import JobStatus, RunStatus, SearchStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    max_concurrent_searches: Mapped[int] = mapped_column(Integer)
    max_trials_per_search: Mapped[int] = mapped_column(Integer)
    max_concurrent_runs: Mapped[int] = mapped_column(Integer, default=16, server_default="16")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Search(Base):
    __tablename__ = "searches"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_searches_idempotency"),
        Index("ix_searches_tenant_created", "tenant_id", "created_at", "id"),
    )
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default=SearchStatus.QUEUED, index=True)
    study_name: Mapped[str] = mapped_column(String(200))
    planned: Mapped[int] = mapped_column(Integer, default=0)
    finished: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    ranking: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    recommendation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SearchEvent(Base):
    __tablename__ = "search_events"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    search_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SearchTrial(Base):
    """A finished trial, copied from the Optuna study by the worker (the API reads only ours)."""

    __tablename__ = "search_trials"
    __table_args__ = (UniqueConstraint("search_id", "number", name="uq_search_trials_number"),)
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    search_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    values: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    attrs: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_queue_status", "queue", "status", "id"),
        UniqueConstraint("search_id", "shard", name="uq_jobs_search_shard"),
    )
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    search_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    shard: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queue: Mapped[str] = mapped_column(String(100), default="default")
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)  # JobStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SearchRun(Base):
    """A claim on one run of a search (see the module docstring); ``weight`` is how many of
    the search's planned trials it covers (a joint run: every candidate; a baseline: none)."""

    __tablename__ = "search_runs"
    __table_args__ = (UniqueConstraint("search_id", "unit", name="uq_search_runs_unit"),)
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    search_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), index=True
    )
    unit: Mapped[str] = mapped_column(String(300))
    weight: Mapped[int] = mapped_column(Integer, default=1)
    job_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.RUNNING)  # RunStatus
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
