"""Engine and sessions for the app's store (SQLite by default, any SQLAlchemy URL via DATABASE_URL).

SQLite gets WAL journaling, foreign keys on and a busy timeout on every connection.

The schema is owned by the Alembic migrations in `storage/migrations/versions/` (shipped with the
package; no alembic.ini is needed at runtime). `make_engine` brings the store to the newest
revision before handing out the engine (`upgrade_store`):

- One process at a time: the upgrade holds PostgreSQL's transaction-level advisory lock
  `MIGRATION_LOCK_KEY` (`pg_advisory_xact_lock`, taken on the migration's own connection and
  released with its commit or rollback), or for a SQLite file an exclusive `flock` on
  `<database>.migrate-lock` next to it (plus SQLite's own write lock, `BEGIN IMMEDIATE`). A process
  that waited finds the store already upgraded and does nothing. `:memory:` needs no lock. A store
  already at the newest revision is only read (no lock, no transaction held).
- A store made by the first release (its tables, no `alembic_version`) is stamped `0001` first;
  tables without history that are not that schema, or a revision this code does not know (a newer
  version migrated the store), stop the start with `StoreSchemaError`.
- Everything runs in one transaction (PostgreSQL and SQLite both have transactional DDL; on SQLite
  the transaction is begun explicitly since the driver would not), so a failed upgrade leaves the
  store as it was.
- SQLite: batch migrations recreate tables (copy, drop, rename); with foreign keys on, dropping
  the old table would cascade into the rows that point at it. The migration connection turns
  foreign keys off, refuses to commit when `PRAGMA foreign_key_check` finds a row the migration
  left dangling, and turns them back on.

Adding a revision after changing `models.py` (the developer config is
`src/cfo_desk/storage/migrations/alembic.ini`; the store is `DATABASE_URL`, else the settings'
SQLite file, and the CLI takes the same locks)::

    export DATABASE_URL=sqlite:////tmp/cfo_desk_dev.db   # a scratch store
    .venv/bin/alembic -c src/cfo_desk/storage/migrations/alembic.ini upgrade head
    .venv/bin/alembic -c src/cfo_desk/storage/migrations/alembic.ini revision --autogenerate \\
        --rev-id 0003 -m "what changed"

Then edit `versions/0003_what_changed.py`: autogenerate renders the app's column types as plain
`sa.*` types, but it reads a rename as drop + add (data lost), ignores CHECK constraints and never
moves data. Write it for both backends (`op.batch_alter_table` works on both; PostgreSQL type
changes need `postgresql_using`), give it a `downgrade()`, and run `tests/test_migrations.py`,
which compares the migrated schema with the models on SQLite and PostgreSQL (`alembic ... check`
does the same against the dev store).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlmodel import Session, create_engine

from cfo_desk.config import get_settings
from cfo_desk.storage import models  # noqa: F401  (registers the tables)

try:  # POSIX; elsewhere SQLite's own write lock (BEGIN IMMEDIATE) still serialises the upgrade
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
FIRST_RELEASE_REVISION = "0001"
FIRST_RELEASE_TABLES = frozenset({"workspace", "dataset", "thread", "message", "artifact"})
MIGRATION_LOCK_KEY = int.from_bytes(b"cfodesk", "big")  # fixed PostgreSQL advisory lock key

_engines: dict[str, Engine] = {}
_engines_guard = threading.Lock()


class StoreSchemaError(RuntimeError):
    """The store's schema cannot be upgraded safely (unknown state or broken foreign keys)."""


def make_engine(url: str) -> Engine:
    """A new engine for `url` with the store upgraded to the newest revision; SQLite is set up for
    WAL + FKs."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if (database := _sqlite_file(parsed)) is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - exercised by every test
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        upgrade_store(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged migrations; `connection` is the one env.py migrates."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_store(engine: Engine, revision: str = "head") -> None:
    """Bring the store to `revision` (default: the newest), one process at a time; a first-release
    store (tables, no `alembic_version`) is stamped `0001` first. A store already there is only
    read (no lock)."""
    if _is_at(engine, revision):
        return
    with migration_connection(engine) as connection:
        config = alembic_config(connection)
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        unknown = set(MigrationContext.configure(connection).get_current_heads()) - known
        if unknown:
            raise StoreSchemaError(
                f"The store is at revision {', '.join(sorted(unknown))}, which this version of the app does not know "
                "(a newer version migrated it). Run the newer version, or restore a backup."
            )
        if _is_first_release_store(connection):
            command.stamp(config, FIRST_RELEASE_REVISION)
        command.upgrade(config, revision)


def _is_at(engine: Engine, revision: str) -> bool:
    """True when the store's revision already is `revision` ("head": the newest)."""
    script = ScriptDirectory.from_config(alembic_config())
    wanted = set(script.get_heads()) if revision == "head" else {script.get_revision(revision).revision}
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads()) == wanted


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for migrating the store: holds the migration lock and one transaction that
    commits when the block ends (rolls back on error). SQLite: foreign keys off inside, and no row
    may be left with a dangling reference it did not have before (`PRAGMA foreign_key_check`)."""
    sqlite_file = _sqlite_file(engine.url) if engine.url.get_backend_name() == "sqlite" else None
    with _file_lock(sqlite_file), engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            with _sqlite_migration_transaction(connection):
                yield connection
        else:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                yield connection


@contextmanager
def _sqlite_migration_transaction(connection: Connection) -> Iterator[None]:
    # PRAGMA foreign_keys is a no-op inside a transaction, so it is set before BEGIN. The sqlite3
    # driver begins transactions only before INSERT/UPDATE/DELETE, so DDL would run outside one:
    # for the migration the driver is put in autocommit mode and the transaction begun here
    # (IMMEDIATE: the write lock up front). commit()/rollback() still end it.
    dbapi_connection = connection.connection.driver_connection
    foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()  # ON from the connect hook
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    isolation_level = dbapi_connection.isolation_level
    dbapi_connection.isolation_level = None
    try:
        with connection.begin():
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            before = _foreign_key_problems(connection)
            yield
            # Only what the migration broke: rows already dangling before are not its doing.
            broken = _foreign_key_problems(connection) - before
            if broken:
                raise StoreSchemaError(f"The migration would leave rows with broken foreign keys: {sorted(broken)[:10]}")
    finally:
        if connection.in_transaction():  # pragma: no cover - begin() ended it
            connection.rollback()
        dbapi_connection.isolation_level = isolation_level
        connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        connection.commit()


def _foreign_key_problems(connection: Connection) -> set[tuple]:
    """SQLite's `PRAGMA foreign_key_check` as (table, rowid, referred table) per dangling reference
    (not the FK's index: recreating a table may reorder its FKs)."""
    return {tuple(row[:3]) for row in connection.exec_driver_sql("PRAGMA foreign_key_check")}


def _is_first_release_store(connection: Connection) -> bool:
    """True for a store created by the first release's `create_all` (not under Alembic yet)."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables or not tables & FIRST_RELEASE_TABLES:
        return False
    dataset_columns = {c["name"] for c in inspect(connection).get_columns("dataset")} if "dataset" in tables else set()
    if FIRST_RELEASE_TABLES <= tables and "columns_json" in dataset_columns:
        return True
    raise StoreSchemaError(
        "The store has some of the app's tables but no migration history (alembic_version), and they are not the "
        f"first release's schema; found tables {sorted(tables)}. Stamp it with the matching revision by hand."
    )


def _sqlite_file(url: URL) -> Path | None:
    """The SQLite database file of `url`; None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):  # URI filename (uri=true)
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).expanduser()


@contextmanager
def _file_lock(database: Path | None) -> Iterator[None]:
    """An exclusive flock on `<database>.migrate-lock` (nothing for in-memory databases)."""
    if database is None or fcntl is None:
        yield
        return
    lock_path = database.with_name(database.name + ".migrate-lock")
    with open(lock_path, "a+b") as lock_file:  # never deleted: removing a lock file races
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the settings' store URL), made once."""
    url = url or get_settings().db_url
    with _engines_guard:
        if url not in _engines:
            _engines[url] = make_engine(url)
        return _engines[url]


def dispose_engines() -> None:
    """Close every cached engine (tests, shutdown)."""
    with _engines_guard:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def use_environment(**values: str | None) -> None:
    """Set (a str) or remove (None) these environment variables, then re-read the settings and
    close every store engine, so the next store call follows them (`switched_environment`)."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    dispose_engines()


@contextmanager
def switched_environment(**values: str | None) -> Iterator[None]:
    """For the block, run against other settings (e.g. CFO_DESK_HOME, DATABASE_URL: a private
    store for an evaluation or a benchmark): `use_environment(**values)` on entry; on exit the
    engines are closed and the variables and settings are restored as they were. Not for use while
    other threads use the store."""
    saved = {key: os.environ.get(key) for key in values}
    use_environment(**values)
    try:
        yield
    finally:
        use_environment(**saved)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session on the store; services commit what they change, the session closes on exit."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        yield session
