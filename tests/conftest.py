"""Shared fixtures: every test gets its own data home and SQLite store; no real model is reachable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic_ai import models

from cfo_desk.agent.core import use_model
from cfo_desk.config import get_settings
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
    use_model(None)
    dispose_engines()
    get_settings.cache_clear()


@pytest.fixture
def session():
    """A session on the test's store."""
    with session_scope() as s:
        yield s
