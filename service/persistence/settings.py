"""Service settings, read once from the environment (prefix ``HSSL_``) or a ``.env`` file.

The embedded default needs nothing: SQLite files under ``HSSL_DATA_DIR``. A cluster sets
``HSSL_DATABASE_URL`` to PostgreSQL (psycopg 3); Optuna's tables then live in their own schema
(``HSSL_OPTUNA_SCHEMA``) of the same database, so neither side's migrations touch the other.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HSSL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("hssl-data"), description="embedded storage, run outputs")
    database_url: str | None = Field(None, description="our tables; default SQLite in data_dir")
    optuna_url: str | None = Field(None, description="Optuna storage; default derived")
    optuna_schema: str = "optuna"
    data_root: Path | None = Field(None, description="folders a search may read; None = cwd")
    artifact_dir: Path | None = Field(
        None,
        description="optuna-dashboard artifacts (recommendations, plots); default "
        "<data_dir>/artifacts; give every worker and the dashboard the same folder",
    )
    pool_size: int = Field(2, ge=1, le=64)
    max_overflow: int = Field(2, ge=0, le=64)
    # quotas per tenant (defaults for new tenants)
    max_concurrent_searches: int = Field(2, ge=1)
    max_trials_per_search: int = Field(200, ge=1)
    max_concurrent_runs: int = Field(
        16, ge=1, description="runs of one tenant executing at once, over all its searches"
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    rate_limit_per_minute: int = Field(600, ge=1)
    key_cache_s: float = Field(
        5.0,
        ge=0,
        le=5,
        description="how long the API trusts a key it has checked (a revoke by another "
        "process takes effect within this); 0: check every request in the database",
    )
    # workers
    queue: str = Field("default", description="queue a worker takes jobs from (e.g. gpu-a100)")
    local_workers: int = Field(
        1, ge=0, le=64, description="embedded dispatcher slots: runs this process executes at once"
    )
    warm_pool: bool = Field(
        True, description="pre-start the next trial process while a run trains (workers)"
    )
    max_shards: int = Field(
        64, ge=1, le=1024, description="most shard jobs one search fans out to (runs at once)"
    )
    heartbeat_s: float = Field(10.0, gt=0)
    stale_after_s: float = Field(120.0, gt=0)

    @property
    def is_postgres(self) -> bool:
        """Without touching the data folder (the default URL is SQLite's, made on demand)."""
        return (self.database_url or "").startswith("postgresql")

    @property
    def hands_searches_to_procrastinate(self) -> bool:
        """The one dispatcher choice: on PostgreSQL with no local workers a new search is
        deferred to procrastinate (``hssl worker`` runs it); otherwise the job row is the
        queue and a local dispatcher's threads claim it."""
        return self.is_postgres and self.local_workers == 0

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self._dir() / 'hssl.sqlite3'}"

    @property
    def resolved_optuna_url(self) -> str:
        """Optuna's own schema of the same PostgreSQL database, or its own SQLite file."""
        if self.optuna_url:
            return self.optuna_url
        url = self.resolved_database_url
        if url.startswith("postgresql"):
            # libpq's `options` (psycopg 3 gets it from the URL query) selects the schema for
            # every connection; any options already in the URL are kept.
            from sqlalchemy import make_url

            parsed = make_url(url)
            options = " ".join(
                filter(None, [parsed.query.get("options"), f"-csearch_path={self.optuna_schema}"])
            )
            parsed = parsed.update_query_dict({"options": options})
            return parsed.render_as_string(hide_password=False)
        return f"sqlite:///{self._dir() / 'optuna.sqlite3'}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def resolved_data_root(self) -> Path:
        return (self.data_root or Path.cwd()).resolve()

    def _dir(self) -> Path:
        path = self.data_dir.resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path


@lru_cache
def get_settings() -> Settings:
    return Settings()
