"""Where a workspace's files live on disk, and writing them without leaving half-written files.

Layout under the data home: `<home>/<workspace.key>/` holds `data.duckdb` (the ingested tables),
`uploads/` (each uploaded original, kept as-is) and `artifacts/<run>/` (query results as Parquet).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cfo_desk.config import get_settings

DUCKDB_FILENAME = "data.duckdb"


def workspace_dir(key: str) -> Path:
    """The folder of the workspace with this key (not created)."""
    return get_settings().home / key


def duckdb_path(key: str) -> Path:
    """The workspace's DuckDB file."""
    return workspace_dir(key) / DUCKDB_FILENAME


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_tree(path: Path) -> None:
    """Remove a folder and everything below it, if it exists."""
    shutil.rmtree(path, ignore_errors=True)
