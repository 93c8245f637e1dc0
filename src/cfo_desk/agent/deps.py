"""What the agent's tools can reach during one run: the workspace database and the run's folder."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cfo_desk.analytics.sandbox import QUERY_TIMEOUT_S, RESULT_ROW_LIMIT, ROWS_TO_MODEL, QueryRun
from cfo_desk.deliverables.workbook import ResultInfo


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
    """One successful run_sql call: its handle (q1, q2, ...), purpose, SQL, result and when it ran (UTC)."""

    handle: str
    purpose: str
    sql: str
    run: QueryRun
    ran_at: datetime = field(default_factory=lambda: datetime.now(UTC))


ResultRef = ResultInfo
"""A result a key figure, chart or workbook may use: this turn's or an earlier turn's on the same
path (deliverables.workbook.ResultInfo: handle, purpose, sql, parquet_path, datasets_read, ran_at,
columns, row_count)."""


@dataclass
class DeliverableRecord:
    """A chart or workbook made in this turn: kind "chart" or "workbook", its handle (c1, w1, ...),
    title, spec (JSON-able dict), the file it keeps (a chart: the result's Parquet file it draws
    from; a workbook: its .xlsx in the run folder) and the results it used (handles)."""

    kind: str
    handle: str
    title: str
    spec: dict[str, Any]
    file: Path
    results: list[str]


def datasets_read(run: QueryRun, datasets: dict[str, DatasetRef]) -> list[dict[str, Any]]:
    """The datasets a query read, with the sha256 stamped on each table it read (not the one known
    at turn start): [{"table", "dataset_id", "sha256", "source"}]."""
    return [
        {"table": t, "dataset_id": d.dataset_id, "sha256": run.table_sha256.get(t, d.sha256), "source": d.source}
        for t in run.tables
        if (d := datasets.get(t)) is not None
    ]


@dataclass
class AgentDeps:
    """Dependencies of one agent run (one turn).

    `run_dir` receives each result as `<handle>.parquet`; `results` collects them in call order.
    Setting `stop` interrupts a query in flight (the run's worker sets it when the analyst stops).
    `earlier_results` maps the handles of earlier turns' results on the conversation's path to them
    (key figures, charts and workbooks may use them); `earlier_handles` counts the charts ("c") and
    workbooks ("w") made earlier on the path, so their handles go on from there; `glossary_text` is the workspace glossary block of the
    instructions (services/glossary.py), empty when the workspace has none.
    """

    workspace_name: str
    db_path: Path
    run_dir: Path
    datasets: list[DatasetRef]
    limits: SqlLimits = field(default_factory=SqlLimits)
    results: list[QueryResultRecord] = field(default_factory=list)
    first_handle: int = 1
    earlier_results: dict[str, ResultRef] = field(default_factory=dict)
    earlier_handles: dict[str, int] = field(default_factory=dict)
    deliverables: list[DeliverableRecord] = field(default_factory=list)
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

    def result_refs(self) -> dict[str, ResultRef]:
        """Handle → every result this turn may use: earlier turns' on the path and this turn's."""
        by_table = {d.table_name: d for d in self.datasets}
        with self._lock:
            now = {
                r.handle: ResultRef(
                    handle=r.handle, purpose=r.purpose, sql=r.sql, parquet_path=r.run.parquet_path, columns=r.run.columns,
                    row_count=r.run.row_count, datasets_read=datasets_read(r.run, by_table), ran_at=r.ran_at,
                )
                for r in self.results
                if r.run.parquet_path
            }
        return {**self.earlier_results, **now}

    def result_files(self) -> dict[str, Path]:
        """Handle → Parquet file of every result a key figure may cite: earlier turns' and this turn's."""
        return {h: r.parquet_path for h, r in self.result_refs().items()}

    def next_deliverable_handle(self, prefix: str) -> str:
        """The next chart ("c") or workbook ("w") handle along the path: c1, c2, ... (thread-safe)."""
        with self._lock:
            made = sum(1 for d in self.deliverables if d.handle.startswith(prefix))
            return f"{prefix}{self.earlier_handles.get(prefix, 0) + made + 1}"

    def add_deliverable(self, record: DeliverableRecord) -> None:
        """Keep a chart or workbook made in this turn (thread-safe)."""
        with self._lock:
            self.deliverables.append(record)
