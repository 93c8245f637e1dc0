"""Alembic migrations of the store, on SQLite and PostgreSQL: a first-release store with data
upgrades on start and reads back through the models and services, the migrated schema matches the
models, the enum CHECK constraints hold, concurrent starts upgrade once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelRequest, ModelResponse, TextPart, UserPromptPart
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from cfo_desk.config import get_settings
from cfo_desk.services import threads as threads_svc
from cfo_desk.services import turns
from cfo_desk.storage.db import (
    StoreSchemaError,
    alembic_config,
    dispose_engines,
    get_engine,
    migration_connection,
    session_scope,
    upgrade_store,
)
from cfo_desk.storage.models import Artifact, Dataset, Message, Role, Workspace

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
AT = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)

# The first release's schema, transcribed from its models.py (git 9f4da06,
# src/cfo_desk/storage/models.py) as the types SQLModel derived for it: `str` -> VARCHAR(max_length)
# or VARCHAR, `datetime` -> DateTime(timezone=True), `bool` -> Boolean, `float` -> Float.
# Checked against that file's own create_all by reflection on both backends.
FIRST_RELEASE = sa.MetaData(naming_convention={"ix": "ix_%(column_0_label)s"})


def _fr_ts(name: str = "created_at") -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _fr_fk(target: str, ondelete: str, **kw) -> sa.ForeignKey:
    return sa.ForeignKey(target, ondelete=ondelete, **kw)


sa.Table(
    "workspace", FIRST_RELEASE,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(120), nullable=False, index=True, unique=True),
    sa.Column("key", sa.String(40), nullable=False, unique=True),
    _fr_ts(),
)  # fmt: skip
sa.Table(
    "dataset", FIRST_RELEASE,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("workspace_id", sa.Integer, _fr_fk("workspace.id", "CASCADE"), index=True, nullable=False),
    sa.Column("table_name", sa.String(80), nullable=False),
    sa.Column("source_filename", sa.String(255), nullable=False),
    sa.Column("sheet_name", sa.String(255), nullable=True),
    sa.Column("file_path", sa.String(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("row_count", sa.Integer, nullable=False),
    sa.Column("columns_json", sa.Text, nullable=False),
    sa.Column("notes_json", sa.Text, nullable=False),
    sa.Column("date_order", sa.String(3), nullable=True),
    sa.Column("ambiguous_date_columns_json", sa.Text, nullable=False),
    _fr_ts(),
    sa.UniqueConstraint("workspace_id", "table_name"),
)  # fmt: skip
sa.Table(
    "thread", FIRST_RELEASE,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("workspace_id", sa.Integer, _fr_fk("workspace.id", "CASCADE"), index=True, nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("head_message_id", sa.Integer, _fr_fk("message.id", "SET NULL", use_alter=True), nullable=True),
    sa.Column("forked_from_thread_id", sa.Integer, nullable=True),
    sa.Column("forked_from_thread_title", sa.String(200), nullable=True),
    sa.Column("forked_from_message_id", sa.Integer, nullable=True),
    _fr_ts(),
    _fr_ts("updated_at"),
)  # fmt: skip
sa.Table(
    "message", FIRST_RELEASE,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("workspace_id", sa.Integer, _fr_fk("workspace.id", "CASCADE"), index=True, nullable=False),
    sa.Column("parent_id", sa.Integer, _fr_fk("message.id", "CASCADE"), index=True, nullable=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("output_json", sa.Text, nullable=True),
    sa.Column("model_messages_json", sa.Text, nullable=True),
    sa.Column("model_name", sa.String(200), nullable=True),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("input_tokens", sa.Integer, nullable=True),
    sa.Column("output_tokens", sa.Integer, nullable=True),
    _fr_ts(),
)  # fmt: skip
sa.Table(
    "artifact", FIRST_RELEASE,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("workspace_id", sa.Integer, _fr_fk("workspace.id", "CASCADE"), index=True, nullable=False),
    sa.Column("message_id", sa.Integer, _fr_fk("message.id", "CASCADE"), index=True, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("handle", sa.String(40), nullable=False),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("sql", sa.Text, nullable=True),
    sa.Column("file_path", sa.String(), nullable=False),
    sa.Column("row_count", sa.Integer, nullable=False),
    sa.Column("truncated", sa.Boolean, nullable=False),
    sa.Column("columns_json", sa.Text, nullable=False),
    sa.Column("datasets_json", sa.Text, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=True),
    _fr_ts(),
)  # fmt: skip

COLUMNS = [{"name": "invoice_date", "type": "DATE"}, {"name": "amount", "type": "DECIMAL(18,2)"}]
NOTES = ["Renamed header 'Amount ($)' to amount.", "Assumed MM/DD for invoice_date."]
OUTPUT = {"answer": "MRR in December 2024 was $42,000.", "queries": ["q1"], "confidence": "high"}
MODEL_MESSAGES = json.loads(
    ModelMessagesTypeAdapter.dump_json(
        [ModelRequest(parts=[UserPromptPart("What was MRR?")]), ModelResponse(parts=[TextPart("MRR was $42,000.")])]
    )
)
RESULT_COLUMNS = [{"name": "mrr_usd", "type": "DOUBLE"}]


@pytest.fixture
def url(store) -> str:
    """The test's store URL (SQLite under the test's home, or the PostgreSQL test database)."""
    return get_settings().db_url


def bare_engine(url: str) -> sa.Engine:
    """An engine that neither migrates nor sets pragmas: it plays the first release or an old app."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def schema_diff(engine: sa.Engine, metadata: sa.MetaData = SQLModel.metadata) -> list:
    """What Alembic's autogenerate would change to make the store match `metadata` (no filtering:
    SQLModel's AutoString and the models' UtcDateTime compare as their VARCHAR/DateTime impls)."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def revision_of(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]


def _insert(conn: sa.Connection, sql: str, **params) -> int:
    """Run a raw INSERT ... RETURNING id; `at` binds as the first release's timestamp type."""
    stmt = sa.text(sql + " RETURNING id")
    if "at" in params:
        stmt = stmt.bindparams(sa.bindparam("at", type_=sa.DateTime(timezone=True)))
    return conn.execute(stmt, params).scalar_one()


def insert_first_release_data(engine: sa.Engine) -> dict[str, int]:
    """A workspace, a dataset, a thread whose head is an assistant answer under a question, and the
    answer's artifact, written with raw SQL the way the first release stored them (JSON as text)."""
    ids: dict[str, int] = {}
    with engine.begin() as conn:
        ids["ws"] = _insert(conn, "INSERT INTO workspace (name, key, created_at) VALUES ('Acme', 'acme-1a2b', :at)", at=AT)
        ids["ds"] = _insert(
            conn,
            "INSERT INTO dataset (workspace_id, table_name, source_filename, sheet_name, file_path, sha256, size_bytes,"
            " row_count, columns_json, notes_json, date_order, ambiguous_date_columns_json, created_at)"
            " VALUES (:ws, 'invoices', 'invoices.csv', NULL, 'uploads/invoices.csv', :sha, 120, 2, :cols, :notes, 'MDY',"
            " :amb, :at)",
            ws=ids["ws"], sha="ab" * 32, cols=json.dumps(COLUMNS), notes=json.dumps(NOTES), amb='["invoice_date"]', at=AT,
        )  # fmt: skip
        ids["thread"] = _insert(
            conn,
            "INSERT INTO thread (workspace_id, title, head_message_id, created_at, updated_at) VALUES (:ws, 'MRR', NULL, :at, :at)",
            ws=ids["ws"], at=AT,
        )  # fmt: skip
        ids["user"] = _insert(
            conn,
            "INSERT INTO message (workspace_id, parent_id, role, status, content, created_at)"
            " VALUES (:ws, NULL, 'user', 'ok', 'What was MRR?', :at)",
            ws=ids["ws"], at=AT,
        )  # fmt: skip
        ids["assistant"] = _insert(
            conn,
            "INSERT INTO message (workspace_id, parent_id, role, status, content, output_json, model_messages_json,"
            " model_name, duration_s, input_tokens, output_tokens, created_at)"
            " VALUES (:ws, :parent, 'assistant', 'ok', 'MRR was $42,000.', :output, :history, 'test', 1.5, 10, 20, :at)",
            ws=ids["ws"], parent=ids["user"], output=json.dumps(OUTPUT), history=json.dumps(MODEL_MESSAGES), at=AT,
        )  # fmt: skip
        conn.execute(sa.text("UPDATE thread SET head_message_id = :m WHERE id = :t"), {"m": ids["assistant"], "t": ids["thread"]})
        ids["artifact"] = _insert(
            conn,
            "INSERT INTO artifact (workspace_id, message_id, kind, handle, title, sql, file_path, row_count, truncated,"
            " columns_json, datasets_json, duration_s, created_at)"
            " VALUES (:ws, :msg, 'query_result', 'q1', 'MRR', 'SELECT 1', 'runs/1/q1.parquet', 1, :trunc, :cols, :read, 0.01, :at)",
            ws=ids["ws"], msg=ids["assistant"], trunc=False, cols=json.dumps(RESULT_COLUMNS),
            read=json.dumps([{"table": "invoices", "dataset_id": ids["ds"], "sha256": "ab" * 32, "source": "invoices.csv"}]),
            at=AT,
        )  # fmt: skip
    return ids


def assert_reads_back(ids: dict[str, int]) -> None:
    """The first release's rows, read through today's models and services."""
    with session_scope() as session:
        conv = threads_svc.conversation(session=session, thread_id=ids["thread"])
        assert [m.id for m in conv] == [ids["user"], ids["assistant"]]
        user, answer = conv
        assert (user.role, answer.role) == ("user", "assistant") and answer.role == Role.assistant
        assert (user.status, answer.status) == ("ok", "ok")
        assert isinstance(answer.output, dict) and answer.output == OUTPUT
        assert answer.model_messages == MODEL_MESSAGES and user.output is None and user.model_messages is None
        history = turns.model_history(session=session, message_id=answer.id)  # replayable to the model
        assert [type(m) for m in history] == [ModelRequest, ModelResponse]
        assert answer.created_at == AT  # the same instant, timezone-aware UTC

        ds = session.get(Dataset, ids["ds"])
        assert ds.columns == COLUMNS and isinstance(ds.columns[0], dict)
        assert ds.notes == NOTES and ds.ambiguous_date_columns == ["invoice_date"] and ds.date_order == "MDY"

        art = session.get(Artifact, ids["artifact"])
        assert art.message_id == ids["assistant"] and art.columns == RESULT_COLUMNS
        assert isinstance(art.datasets_read, list) and art.datasets_read[0]["dataset_id"] == ids["ds"]

        # The app keeps writing: ids continue (PostgreSQL sequences intact), JSON round-trips.
        fork = threads_svc.fork_thread(session=session, thread_id=ids["thread"], message_id=ids["user"])
        assert fork.id > ids["thread"]
        assert [m.id for m in threads_svc.conversation(session=session, thread_id=fork.id)] == [ids["user"]]
        session.add(Message(workspace_id=ids["ws"], parent_id=ids["user"], role=Role.assistant, content="x", output={"a": [1]}))
        session.commit()
        if session.get_bind().dialect.name == "sqlite":  # the migration turned FKs off on its connection only
            assert session.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1


def test_store_at_0001_with_data_upgrades_on_start_and_reads_back(url):
    engine = bare_engine(url)
    upgrade_store(engine, "0001")
    ids = insert_first_release_data(engine)
    engine.dispose()

    engine = get_engine()  # upgrades to head on start
    assert revision_of(engine) == [HEAD]
    assert_reads_back(ids)
    assert schema_diff(engine) == []


def test_first_release_store_is_stamped_and_upgraded_by_get_engine(url):
    engine = bare_engine(url)
    FIRST_RELEASE.create_all(engine)  # what the first release's make_engine did: no alembic_version
    ids = insert_first_release_data(engine)
    assert "alembic_version" not in sa.inspect(engine).get_table_names()
    engine.dispose()

    engine = get_engine()
    assert revision_of(engine) == [HEAD]
    assert_reads_back(ids)
    assert schema_diff(engine) == []

    dispose_engines()  # a second start finds nothing to do
    with session_scope() as session:
        assert session.get(Workspace, ids["ws"]).name == "Acme"
    assert revision_of(get_engine()) == [HEAD]


def test_baseline_is_the_first_release_schema_and_head_is_the_models(url):
    engine = bare_engine(url)
    upgrade_store(engine, "0001")
    assert schema_diff(engine, FIRST_RELEASE) == []
    upgrade_store(engine, "head")
    assert schema_diff(engine) == []
    engine.dispose()
    assert schema_diff(get_engine()) == []  # a new store, straight to head


def test_downgrade_to_0001_keeps_the_data(url):
    engine = bare_engine(url)
    upgrade_store(engine, "0001")
    ids = insert_first_release_data(engine)
    upgrade_store(engine)
    with migration_connection(engine) as conn:
        command.downgrade(alembic_config(conn), "0001")
    assert revision_of(engine) == ["0001"] and schema_diff(engine, FIRST_RELEASE) == []
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT columns_json, notes_json, created_at FROM dataset WHERE id = :id"), {"id": ids["ds"]}
        ).one()
        assert (json.loads(row.columns_json), json.loads(row.notes_json)) == (COLUMNS, NOTES)
        head = conn.execute(sa.text("SELECT head_message_id FROM thread WHERE id = :id"), {"id": ids["thread"]}).scalar()
        assert head == ids["assistant"]
        if conn.dialect.name == "postgresql":
            assert row.created_at == AT  # TIMESTAMP WITH TIME ZONE again, same instant
    engine.dispose()
    get_engine()
    assert_reads_back(ids)


@pytest.mark.parametrize(
    ("table", "column", "good"),
    [("message", "status", "interrupted"), ("message", "role", "assistant"), ("run", "status", "queued")],
)
def test_check_constraints_refuse_unknown_values(url, table, column, good):
    engine = get_engine()
    with engine.begin() as conn:
        ws = _insert(conn, "INSERT INTO workspace (name, key, created_at) VALUES ('Acme', 'acme', :at)", at=AT)
        thread = _insert(conn, "INSERT INTO thread (workspace_id, title, created_at, updated_at) VALUES (:ws, 't', :at, :at)", ws=ws, at=AT)
    values = {
        "message": ("INSERT INTO message (workspace_id, role, status, content, created_at) VALUES (:ws, :role, :status, 'x', :at)",
                    {"role": "user", "status": "ok"}),
        "run": ("INSERT INTO run (workspace_id, thread_id, status, stop_requested, progress, created_at)"
                " VALUES (:ws, :thread, :status, :stop, '[]', :at)", {"status": "queued", "stop": False, "thread": thread}),
    }  # fmt: skip
    sql, params = values[table]
    with engine.begin() as conn:  # the same row with a known value is fine
        _insert(conn, sql, **{**params, column: good}, ws=ws, at=AT)
    constraint = {"message": f"message_{column}", "run": "run_status"}[table]
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        _insert(conn, sql, **{**params, column: "bogus"}, ws=ws, at=AT)


def test_a_store_with_unknown_tables_and_no_history_is_refused(url):
    engine = bare_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE workspace (id INTEGER PRIMARY KEY, name VARCHAR(120))"))
    engine.dispose()
    with pytest.raises(StoreSchemaError, match="no migration history"):
        get_engine()


def test_processes_starting_together_upgrade_once(url, tmp_path):
    """Several processes (app replicas, a worker) start on the same new store at the same moment."""
    start_at = time.time() + 3
    code = (
        "import sys, time\n"
        "from cfo_desk.storage.db import get_engine\n"
        "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
        "get_engine()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(start_at)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    engine = get_engine()
    assert revision_of(engine) == [HEAD]
    assert schema_diff(engine) == []


def test_sqlite_migration_is_one_transaction_and_leaves_no_dangling_rows():
    """SQLite (foreign keys are off while migrating): a migration step that leaves a row pointing
    nowhere is refused, and everything it did, DDL included, is rolled back."""
    engine = get_engine()
    assert engine.dialect.name == "sqlite"
    with pytest.raises(StoreSchemaError, match="broken foreign keys"), migration_connection(engine) as conn:
        conn.execute(sa.text("CREATE TABLE scratch (id INTEGER PRIMARY KEY)"))
        _insert(conn, "INSERT INTO thread (workspace_id, title, created_at, updated_at) VALUES (999, 't', :at, :at)", at=AT)
    assert "scratch" not in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM thread")).scalar() == 0
        assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1


def test_sqlite_rows_dangling_before_the_upgrade_do_not_block_it():
    engine = bare_engine(get_settings().db_url)
    upgrade_store(engine, "0001")
    ids = insert_first_release_data(engine)
    with engine.begin() as conn:  # a bare connection has foreign keys off
        conn.execute(sa.text("UPDATE dataset SET workspace_id = 999 WHERE id = :id"), {"id": ids["ds"]})
    engine.dispose()
    engine = get_engine()
    assert revision_of(engine) == [HEAD]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT workspace_id FROM dataset WHERE id = :id"), {"id": ids["ds"]}).scalar() == 999


def test_a_store_migrated_by_a_newer_version_is_refused(url):
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    dispose_engines()
    with pytest.raises(StoreSchemaError, match="revision 0999, which this version of the app does not know"):
        get_engine()


def test_sqlite_upgrade_waits_for_the_file_lock():
    """The flock next to the database file is what a second process waits on (indefinitely, unlike
    SQLite's busy timeout) while another one migrates."""
    fcntl = pytest.importorskip("fcntl")
    database = Path(sa.make_url(get_settings().db_url).database)
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".migrate-lock"), "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)  # "another process is migrating"
        starting = threading.Thread(target=get_engine, daemon=True)
        starting.start()
        starting.join(1.0)
        assert starting.is_alive()  # waiting, no table made yet
        with sqlite3.connect(database) as raw:
            assert raw.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    starting.join(30)
    assert not starting.is_alive()
    assert revision_of(get_engine()) == [HEAD]
