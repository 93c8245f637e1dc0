"""What the agent's tools can reach during one run: the workspace database and the run's folder."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from cfo_desk.analytics.sandbox import QUERY_TIMEOUT_S, RESULT_ROW_LIMIT, ROWS_TO_MODEL, QueryRun


@dataclass(frozen=True)
class DatasetRef:
    """A dataset as the agent sees it: its table, source file (and sheet) and content hash."""

    dataset_id: int
    table_name: str
    source: str
    sha256: str
    row_count: int
    columns: list[tuple[str, str]]
    notes: tuple[str, ...] = ()  # what ingest did (left-out total rows, assumed date order, chosen types, ...)
    date_ranges: dict[str, list[str]] = field(default_factory=dict)  # {column: [first, last]} ISO dates


@dataclass(frozen=True)
class SqlLimits:
    """Named limits for agent SQL: seconds per query, rows shown to the model, rows kept."""

    timeout_s: float = QUERY_TIMEOUT_S
    rows_to_model: int = ROWS_TO_MODEL
    result_row_limit: int = RESULT_ROW_LIMIT


@dataclass
class QueryResultRecord:
    """One successful run_sql call: its handle (q1, q2, ...), purpose, SQL and result."""

    handle: str
    purpose: str
    sql: str
    run: QueryRun


@dataclass
class AgentDeps:
    """Dependencies of one agent run (one turn).

    `run_dir` receives each result as `<handle>.parquet`; `results` collects them in call order.
    Setting `stop` interrupts a query in flight (the run's worker sets it when the analyst stops).
    `earlier_results` maps the handles of earlier turns on the conversation's path to their Parquet
    files (key figures may cite them); `glossary_text` is the workspace glossary block of the
    instructions (services/glossary.py), empty when the workspace has none.
    """

    workspace_name: str
    db_path: Path
    run_dir: Path
    datasets: list[DatasetRef]
    limits: SqlLimits = field(default_factory=SqlLimits)
    results: list[QueryResultRecord] = field(default_factory=list)
    first_handle: int = 1
    earlier_results: dict[str, Path] = field(default_factory=dict)
    glossary_text: str = ""
    glossary_terms: frozenset[str] = frozenset()  # the glossary's terms, folded (lower case, single spaces)
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _handles_given: int = field(default=0, repr=False)

    def next_handle(self) -> str:
        """The next result handle, q<first_handle>, ... (safe when tools run concurrently).

        Handles continue along the conversation's path, so no two results the model sees share one.
        """
        with self._lock:
            self._handles_given += 1
            return f"q{self.first_handle + self._handles_given - 1}"

    def add_result(self, record: QueryResultRecord) -> None:
        """Keep a finished result (thread-safe)."""
        with self._lock:
            self.results.append(record)

    def result_files(self) -> dict[str, Path]:
        """Handle → Parquet file of every result a key figure may cite: earlier turns' and this turn's."""
        with self._lock:
            return {**self.earlier_results, **{r.handle: r.run.parquet_path for r in self.results if r.run.parquet_path}}
