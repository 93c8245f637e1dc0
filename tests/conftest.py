"""Shared fixtures: every test gets its own data home and SQLite store; no real model is reachable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from pydantic_ai import models
from sqlalchemy.exc import OperationalError

from cfo_desk.agent.core import use_model
from cfo_desk.config import get_settings
from cfo_desk.services.worker import shutdown_worker
from cfo_desk.storage.db import dispose_engines, session_scope

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (stub_openai, agent_script, messy_files)
models.ALLOW_MODEL_REQUESTS = False  # FunctionModel/TestModel only; no provider is ever called


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A fresh CFO_DESK_HOME (and SQLite store inside it) per test; no model configured."""
    home = tmp_path / "home"
    monkeypatch.setenv("CFO_DESK_HOME", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CFO_DESK_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    get_settings.cache_clear()
    dispose_engines()
    use_model(None)
    yield home
    shutdown_worker()  # a worker started by an AppTest must not outlive its test's store
    use_model(None)
    dispose_engines()
    get_settings.cache_clear()


PG_TEST_URL = os.environ.get("CFO_DESK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _reset_postgres(url: str) -> None:
    """Drop the store's tables in the PostgreSQL test database (skip when it is unreachable)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as con:
            con.execute(text("DROP SCHEMA public CASCADE"))
            con.execute(text("CREATE SCHEMA public"))
    except OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {url}: {exc.__class__.__name__}")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, monkeypatch) -> str:
    """Run a test on each store backend: SQLite (the default) and PostgreSQL (DATABASE_URL)."""
    if request.param == "postgresql":
        _reset_postgres(PG_TEST_URL)
        monkeypatch.setenv("DATABASE_URL", PG_TEST_URL)
        get_settings.cache_clear()
        dispose_engines()
    return request.param


@pytest.fixture
def session():
    """A session on the test's store."""
    with session_scope() as s:
        yield s


def reap(procs: list) -> None:
    """Kill and wait for every subprocess still running in `procs` (emptying it): test teardown."""
    while procs:
        proc = procs.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def sample(session):
    """The sample workspace, ingested, and a new thread in it: (workspace, thread)."""
    from cfo_desk.services import samples, threads as threads_svc

    ws = samples.load_sample_workspace(session=session)
    thread = threads_svc.create_thread(session=session, workspace_id=ws.id)
    return ws, thread
