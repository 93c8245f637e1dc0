"""Configuration read from the environment or a `.env` file (pydantic-settings).

| variable | meaning | default |
|---|---|---|
| `CFO_DESK_HOME` | data root: one folder per workspace, the SQLite file | `./workspaces` |
| `DATABASE_URL` | any SQLAlchemy URL for the app's store | SQLite file `cfo_desk.db` under the home |
| `CFO_DESK_MODEL` | a pydantic-ai model string, e.g. `openai-chat:gpt-4.1` | unset: asking is disabled |
| `CFO_DESK_SQL_TIMEOUT` | seconds one agent query may run | 30 |
| `CFO_DESK_SQL_ROWS_TO_MODEL` | rows of a result shown to the model | 200 |
| `CFO_DESK_SQL_RESULT_ROW_LIMIT` | rows of a result kept as Parquet | 1,000,000 |
| `CFO_DESK_SQL_WORKERS` | warm worker processes that run agent SQL (0: in the app process, no OS limits) | 2 |
| `CFO_DESK_SQL_MEMORY_GB` | address space (RLIMIT_AS) of one SQL worker, GB | 2 |
| `CFO_DESK_INGEST_MEMORY_GB` | address space (RLIMIT_AS) of the worker process that parses an upload, GB (0: in the app process) | 4 |
| `CFO_DESK_INGEST_TIMEOUT_S` | seconds one upload's parse may take | 300 |
| `CFO_DESK_INGEST_MAX_COLUMNS` | columns per uploaded table (CSV header, worksheet dimension) | 1,000 |
| `CFO_DESK_INGEST_MAX_CELLS` | rows x columns per upload | 30,000,000 |
| `CFO_DESK_REQUEST_LIMIT` | model requests per turn | 25 |
| `CFO_DESK_TOOL_CALLS_LIMIT` | tool calls per turn | 30 |
| `CFO_DESK_TOTAL_TOKENS_LIMIT` | model tokens (input + output) per turn | 1,000,000 |
| `CFO_DESK_RUNS_PER_PROCESS` | runs one process (app or `cfo-desk worker`) executes at once | 8 |
| `CFO_DESK_RUN_LEASE_S` | seconds a run's thread lease lasts without a heartbeat (crash detection) | 30 |
| `CFO_DESK_RUN_POLL_S` | seconds between a worker's looks at the run queue | 0.5 |
| `CFO_DESK_QUEUED_PER_THREAD` | questions that may wait behind a running one in a thread | 5 |
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from dotenv import load_dotenv
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """The app's settings; field names are the environment variable names, case-insensitive."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    cfo_desk_home: Path = Field(default=Path("workspaces"), description="Data root folder.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite under the home if unset.")
    cfo_desk_model: str | None = Field(default=None, description="pydantic-ai model string.")
    cfo_desk_sql_timeout: float = Field(default=30.0, gt=0, description="Seconds per agent query.")
    cfo_desk_sql_rows_to_model: int = Field(default=200, gt=0, description="Result rows shown to the model.")
    cfo_desk_sql_result_row_limit: int = Field(default=1_000_000, gt=0, description="Result rows kept as Parquet.")
    cfo_desk_sql_workers: int = Field(default=2, ge=0, le=32, description="Warm SQL worker processes (0: in-process).")
    cfo_desk_sql_memory_gb: float = Field(default=2.0, ge=1, le=1024, description="Address space of one SQL worker, GB.")
    cfo_desk_ingest_memory_gb: float = Field(default=4.0, ge=0, le=1024, description="Address space of the ingest worker, GB (0: parse in-process, no limit).")
    cfo_desk_ingest_timeout_s: float = Field(default=300.0, gt=0, description="Seconds one upload's parse may take.")
    cfo_desk_ingest_max_columns: int = Field(default=1_000, gt=0, description="Columns per uploaded table.")
    cfo_desk_ingest_max_cells: int = Field(default=30_000_000, gt=0, description="Rows x columns per upload.")
    cfo_desk_request_limit: int = Field(default=25, gt=0, description="Model requests per turn.")
    cfo_desk_tool_calls_limit: int = Field(default=30, gt=0, description="Tool calls per turn.")
    cfo_desk_total_tokens_limit: int = Field(default=1_000_000, gt=0, description="Model tokens (in + out) per turn.")
    cfo_desk_runs_per_process: int = Field(default=8, gt=0, le=64, description="Runs one process executes at once.")
    cfo_desk_run_lease_s: float = Field(default=30.0, ge=1, description="Seconds a thread lease lasts without a heartbeat.")
    cfo_desk_run_poll_s: float = Field(default=0.5, gt=0, le=10, description="Seconds between looks at the run queue.")
    cfo_desk_queued_per_thread: int = Field(default=5, ge=0, le=50, description="Questions that may wait behind a running one.")

    @model_validator(mode="after")
    def _lease_outlives_polls(self) -> "Settings":
        """A worker renews a lease at most once per poll: a lease shorter than three polls would
        expire under live runs (every one of them swept as interrupted)."""
        if self.cfo_desk_run_lease_s < 3 * self.cfo_desk_run_poll_s:
            raise ValueError(
                f"CFO_DESK_RUN_LEASE_S ({self.cfo_desk_run_lease_s:g} s) must be at least 3 x CFO_DESK_RUN_POLL_S "
                f"({self.cfo_desk_run_poll_s:g} s)."
            )
        return self

    @property
    def home(self) -> Path:
        """The data root as an absolute path (created on first use by the storage layer)."""
        return self.cfo_desk_home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """The store's SQLAlchemy URL: `DATABASE_URL`, else `sqlite:///<home>/cfo_desk.db`."""
        return self.database_url or f"sqlite:///{self.home / 'cfo_desk.db'}"

    @property
    def model(self) -> str | None:
        """The configured model string, or None when blank or unset."""
        return (self.cfo_desk_model or "").strip() or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; tests call `get_settings.cache_clear()` after changing env.

    Also loads `.env` into the process environment (without overriding what is set), because the
    model providers read their keys (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) from there.
    """
    load_dotenv(".env", override=False)
    return Settings()
