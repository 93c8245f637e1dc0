"""Opening a store session for callers above the services (the UI), without importing storage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlmodel import Session

from cfo_desk.storage.db import session_scope


@contextmanager
def open_session() -> Iterator[Session]:
    """A session on the configured store, closed on exit; services commit their own changes."""
    with session_scope() as session:
        yield session
