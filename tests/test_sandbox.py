"""The agent's SQL sandbox on real DuckDB: each attack refused, limits enforced, nothing changed."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from cfo_desk.analytics.sandbox import QueryError, QueryRefused, QueryTimeout, run_query
from cfo_desk.analytics.store import writer

secret_frame = pd.DataFrame({"password": ["hunter2"]})  # a replacement scan must not reach this


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "ws" / "data.duckdb"
    with writer(path) as con:
        con.execute("CREATE TABLE revenue AS SELECT range AS i, (range % 12) + 1 AS month, range * 10.0 AS amount FROM range(5000)")
    other = tmp_path / "other" / "data.duckdb"
    with writer(other) as con:
        con.execute("CREATE TABLE secrets AS SELECT 'other workspace' AS s")
    (tmp_path / "outside.csv").write_text("a,b\n1,2\n")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(db: Path, sql: str, **kw):
    return run_query(db, sql, parquet_path=db.parent / "artifacts" / "q.parquet", **kw)


ATTACKS = {
    "read_csv outside the workspace": ("SELECT * FROM read_csv('{outside}')", QueryError, "disabled"),
    "bare file path in FROM": ("SELECT * FROM '{outside}'", QueryError, "disabled"),
    "read_text /etc/passwd": ("SELECT * FROM read_text('/etc/passwd')", QueryError, "disabled"),
    "glob the file system": ("SELECT * FROM glob('/*')", QueryError, "disabled"),
    "read_parquet a result file": ("SELECT * FROM read_parquet('{parquet}')", QueryError, "disabled"),
    "COPY TO a file": ("COPY revenue TO '{out}'", QueryRefused, "COPY"),
    "COPY TO the database file": ("COPY revenue TO '{db}' (FORMAT csv)", QueryRefused, "COPY"),
    "EXPORT DATABASE": ("EXPORT DATABASE '{outdir}'", QueryRefused, "EXPORT"),
    "ATTACH another workspace": ("ATTACH '{other}' AS o", QueryRefused, "ATTACH"),
    "INSTALL an extension": ("INSTALL httpfs", QueryRefused, "LOAD"),
    "LOAD an extension": ("LOAD httpfs", QueryRefused, "LOAD"),
    "SET a limit": ("SET memory_limit='100GB'", QueryRefused, "SET"),
    "RESET the config": ("RESET lock_configuration", QueryRefused, "SET"),
    "two statements": ("SELECT 1; DROP TABLE revenue", QueryRefused, "exactly one"),
    "CREATE TABLE": ("CREATE TABLE x AS SELECT 1", QueryRefused, "CREATE"),
    "DROP TABLE": ("DROP TABLE revenue", QueryRefused, "DROP"),
    "INSERT": ("INSERT INTO revenue VALUES (1, 1, 1)", QueryRefused, "INSERT"),
    "UPDATE": ("UPDATE revenue SET amount = 0", QueryRefused, "UPDATE"),
    "DELETE": ("DELETE FROM revenue", QueryRefused, "DELETE"),
    "CALL enable_logging": ("CALL enable_logging(storage='file', storage_path='{outdir}')", QueryRefused, "CALL"),
    "PRAGMA": ("PRAGMA enable_profiling", QueryRefused, "PRAGMA"),
    "replacement scan of a Python frame": ("SELECT * FROM secret_frame", QueryError, "secret_frame"),
    "empty SQL": ("   ", QueryRefused, "empty"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_refused_and_changes_nothing(db, tmp_path, name):
    template, error, words = ATTACKS[name]
    parquet = tmp_path / "result.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(parquet)
    sql = template.format(
        outside=tmp_path / "outside.csv", out=tmp_path / "leak.csv", db=db, outdir=tmp_path / "dump",
        other=tmp_path / "other" / "data.duckdb", parquet=parquet,
    )
    before = digest(db)
    with pytest.raises(error) as info:
        run(db, sql)
    assert words.lower() in str(info.value).lower()
    assert digest(db) == before
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "dump").exists()
    # The workspace is still readable afterwards, by the same sandbox.
    assert run(db, "SELECT count(*) AS n FROM revenue").rows == [[5000]]


def test_select_forms_are_allowed(db):
    assert run(db, "WITH m AS (SELECT month, sum(amount) s FROM revenue GROUP BY month) SELECT count(*) FROM m").rows == [[12]]
    assert run(db, "FROM revenue SELECT max(i)").rows == [[4999]]
    assert [c["name"] for c in run(db, "DESCRIBE revenue").columns][0] == "column_name"


def test_result_is_capped_for_the_model_and_kept_in_full(db):
    r = run(db, "SELECT * FROM revenue ORDER BY i", rows_to_model=200)
    assert (len(r.rows), r.row_count, r.truncated) == (200, 5000, False)
    assert r.rows[199] == [199, 8, 1990.0]
    kept = pd.read_parquet(r.parquet_path)
    assert len(kept) == 5000 and kept["amount"].sum() == pytest.approx(sum(i * 10.0 for i in range(5000)))
    assert r.tables == ["revenue"]
    capped = run(db, "SELECT a.i FROM revenue a, revenue b", result_row_limit=12_345)
    assert (capped.row_count, capped.truncated) == (12_345, True)
    assert len(pd.read_parquet(capped.parquet_path)) == 12_345


def test_timeout_interrupts_a_runaway_query(db):
    started = time.perf_counter()
    with pytest.raises(QueryTimeout, match="longer than 0.5 seconds"):
        run(db, "SELECT count(*) FROM revenue a, revenue b, revenue c", timeout_s=0.5)
    assert time.perf_counter() - started < 5
    assert not (db.parent / "artifacts" / "q.parquet").exists()
    assert run(db, "SELECT 1 AS ok").rows == [[1]]  # the workspace remains usable


def test_sql_errors_are_reported_for_the_model(db):
    with pytest.raises(QueryError, match="(?i)revenue_typo"):
        run(db, "SELECT * FROM revenue_typo")
    with pytest.raises(QueryError, match="(?i)amnt"):
        run(db, "SELECT amnt FROM revenue")


def test_sandbox_settings_are_in_force(db):
    # What the recipe sets is really set on the agent's connection (and stays set: the config is locked).
    r = run(db, "SELECT current_setting('enable_external_access'), current_setting('python_enable_replacements'), "
               "current_setting('lock_configuration'), current_setting('autoload_known_extensions')")
    assert r.rows == [[False, False, True, False]]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM revenue").fetchone() == (5000,)


def test_select_star_over_a_join_keeps_every_column(db):
    r = run(db, "SELECT a.i, a.month, b.i, b.month FROM revenue a JOIN revenue b ON a.i = b.i + 1 ORDER BY a.i LIMIT 2")
    assert [c["name"] for c in r.columns] == ["i", "month", "i_2", "month_2"]
    assert r.rows == [[1, 2, 0, 1], [2, 3, 1, 2]]  # values line up with their columns
    kept = pd.read_parquet(r.parquet_path)
    assert list(kept.columns) == ["i", "month", "i_2", "month_2"] and kept["i_2"].tolist() == [0, 1]


def test_interval_and_empty_results_are_kept(db):
    r = run(db, "SELECT DATE '2024-12-31' - DATE '2024-01-01' AS days, age(TIMESTAMP '2024-12-31', TIMESTAMP '2024-01-01') AS tenure")
    assert r.rows[0][0] == 365 and "11 months" in r.rows[0][1]
    assert pd.read_parquet(r.parquet_path)["tenure"].iloc[0] == r.rows[0][1]
    empty = run(db, "SELECT * FROM revenue WHERE i < 0")
    assert (empty.row_count, empty.rows) == (0, []) and list(pd.read_parquet(empty.parquet_path).columns) == ["i", "month", "amount"]


def test_what_the_model_sees_is_size_capped(db):
    r = run(db, "SELECT repeat('abcdefghij', 50000) AS blob FROM range(200)")
    assert r.row_count == 200 and len(pd.read_parquet(r.parquet_path)["blob"].iloc[0]) == 500_000  # kept whole
    assert len(r.rows) < 200 and sum(len(repr(row)) for row in r.rows) <= 61_000
    assert r.rows[0][0].endswith("…[499,500 more chars]") and "size limit" in r.notes[0]


def test_tables_read_survive_join_using_and_ctes(db, tmp_path):
    with writer(db) as con:
        con.execute("CREATE TABLE months AS SELECT DISTINCT month FROM revenue")
    r = run(db, "WITH m AS (SELECT month FROM months) SELECT count(*) FROM revenue JOIN m USING (month) NATURAL JOIN months")
    assert r.tables == ["months", "revenue"]  # get_table_names fails on USING; the parse tree still names them
