"""Alembic environment for the app's store.

At runtime `cfo_desk.storage.db.upgrade_store` passes its connection (locked, in a transaction,
foreign keys off on SQLite) as `config.attributes["connection"]`; this file only migrates it and
never commits. From the command line (`alembic -c src/cfo_desk/storage/migrations/alembic.ini ...`)
it opens the store named by `sqlalchemy.url` in the ini, else `DATABASE_URL`/the settings, through
the same `migration_connection`.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from cfo_desk.storage.models import UtcDateTime

config = context.config
target_metadata = SQLModel.metadata  # cfo_desk.storage.models registered the tables


def render_item(type_: str, obj, autogen_context):
    """Autogenerate writes the app's column types as plain SQLAlchemy types (a revision must not
    import the models, which keep changing)."""
    if type_ == "type":
        if isinstance(obj, UtcDateTime):
            return "sa.DateTime()"  # naive UTC in a plain DateTime column
        if isinstance(obj, AutoString):
            return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, render_item=render_item, compare_type=True, **kwargs)


def run_migrations_on(connection: Connection) -> None:
    # Always inside migration_connection's transaction, which makes DDL transactional on SQLite too.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite", transactional_ddl=True)
    with context.begin_transaction():  # a no-op inside the caller's transaction
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from cfo_desk.config import get_settings

    return get_settings().db_url


def run_migrations_offline() -> None:
    url = _url()
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations_on(connection)
        return
    from cfo_desk.storage.db import migration_connection

    engine = create_engine(_url())
    try:
        with migration_connection(engine) as connection:
            run_migrations_on(connection)
    finally:
        engine.dispose()


if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
