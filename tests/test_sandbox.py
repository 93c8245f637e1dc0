"""The agent's SQL sandbox on real DuckDB: each attack refused, limits enforced, nothing changed."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from cfo_desk.analytics import sandbox
from cfo_desk.analytics.sandbox import QueryError, QueryRefused, QueryTimeout, check_functions, run_query
from cfo_desk.analytics.store import sandboxed_reader, writer

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
    "read_csv outside the workspace": ("SELECT * FROM read_csv('{outside}')", QueryRefused, "read_csv() is not allowed: it reads files"),
    "bare file path in FROM": ("SELECT * FROM '{outside}'", QueryError, "disabled"),
    "read_text /etc/passwd": ("SELECT * FROM read_text('/etc/passwd')", QueryRefused, "read_text() is not allowed: it reads files"),
    "glob the file system": ("SELECT * FROM glob('/*')", QueryRefused, "glob() is not allowed: it reads files"),
    "read_parquet a result file": ("SELECT * FROM read_parquet('{parquet}')", QueryRefused, "read_parquet() is not allowed: it reads files"),
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


def test_sandbox_settings_are_in_force(db, tmp_path):
    # What the recipe sets is really set on the agent's connection (and stays set: the config is locked).
    # (Agent SQL may not read settings: the function gate refuses current_setting; app code may.)
    with sandboxed_reader(db) as con:
        r = con.execute("SELECT current_setting('enable_external_access'), current_setting('python_enable_replacements'), "
                        "current_setting('lock_configuration'), current_setting('autoload_known_extensions')").fetchall()
        assert r == [(False, False, True, False)]
        # Behind the function gate, the file system stays closed too (defence in depth).
        with pytest.raises(duckdb.Error, match="(?i)disabled"):
            con.execute(f"SELECT * FROM read_csv('{tmp_path / 'outside.csv'}')").fetchall()
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


# --- The function gate: nothing that reveals paths, settings, secrets or the environment -------

# SQL -> words the refusal must contain (the function or view it names).
REVEALING = {
    "FROM duckdb_databases()": "duckdb_databases() is not allowed: it reveals file paths",
    "SELECT path FROM duckdb_databases": "duckdb_databases is not allowed",
    "SELECT * FROM system.main.duckdb_databases": "duckdb_databases is not allowed",
    "SELECT * FROM pragma_database_list": "pragma_database_list is not allowed: it reveals file paths",
    "SELECT * FROM duckdb_settings()": "duckdb_settings() is not allowed: it reveals the configuration",
    "SELECT * FROM pg_catalog.pg_settings": "pg_settings is not allowed: it reveals the configuration",
    "SELECT current_setting('secret_directory')": "current_setting() is not allowed",
    "SELECT CURRENT_SETTING('temp_directory')": "current_setting() is not allowed",
    'SELECT "Current_Setting"($$home_directory$$)': "current_setting() is not allowed",
    "SELECT system.main.current_setting('threads')": "current_setting() is not allowed",
    "SHOW secret_directory": "SHOW secret_directory is not allowed: it reveals the configuration",
    "SHOW temp_directory": "SHOW temp_directory is not allowed",
    "SELECT * FROM duckdb_temporary_files()": "duckdb_temporary_files() is not allowed: it reveals memory",
    "SELECT * FROM duckdb_memory()": "duckdb_memory() is not allowed",
    "SELECT * FROM pragma_storage_info('revenue')": "pragma_storage_info() is not allowed",
    "SELECT * FROM pragma_database_size()": "pragma_database_size() is not allowed",
    "SELECT * FROM pragma_metadata_info()": "pragma_metadata_info() is not allowed",
    "SELECT * FROM duckdb_secrets()": "duckdb_secrets() is not allowed: it reveals secrets",
    "SELECT * FROM which_secret('s3://bucket/x', 's3')": "which_secret() is not allowed",
    "SELECT * FROM duckdb_extensions()": "duckdb_extensions() is not allowed: it reveals extensions",
    "SELECT getenv('HOME')": "getenv() is not allowed: it reveals the environment",
    "SELECT * FROM pragma_platform()": "pragma_platform() is not allowed",
    "SELECT * FROM duckdb_logs": "duckdb_logs is not allowed",
    "SELECT * FROM duckdb_logs()": "duckdb_logs() is not allowed",
    "SELECT * FROM duckdb_profiling_settings()": "duckdb_profiling_settings() is not allowed",
    "SELECT * FROM query('SELECT * FROM duckdb_settings()')": "query() is not allowed: it runs SQL text",
    "SELECT * FROM query_table('duckdb_databases')": "query_table() is not allowed",
    "SELECT json_serialize_plan('SELECT * FROM duckdb_settings()')": "json_serialize_plan() is not allowed",
    "SELECT * FROM duckdb_prepared_statements()": "duckdb_prepared_statements() is not allowed: in FROM only these table functions",
    "SELECT * FROM histogram_values(duckdb_databases, path)": "histogram_values() is not allowed: in FROM only",
    "SELECT * FROM histogram(pg_settings, setting)": "histogram() is not allowed: in FROM only",
    # hidden in subqueries, CTEs, lateral joins, lambdas, DESCRIBE and SUMMARIZE
    "SELECT (SELECT value FROM duckdb_settings() WHERE name = 'secret_directory')": "duckdb_settings() is not allowed",
    "WITH s AS (SELECT * FROM duckdb_databases()) SELECT * FROM s": "duckdb_databases() is not allowed",
    "SELECT * FROM revenue r, LATERAL (SELECT path FROM duckdb_databases() WHERE r.i = 0) d": "duckdb_databases() is not allowed",
    "SELECT * FROM revenue WHERE month IN (SELECT 1 FROM duckdb_settings())": "duckdb_settings() is not allowed",
    "SELECT list_transform([1], x -> current_setting('memory_limit'))": "current_setting() is not allowed",
    "SELECT i FROM revenue ORDER BY current_setting('threads')": "current_setting() is not allowed",
    "DESCRIBE SELECT current_setting('memory_limit')": "current_setting() is not allowed",
    "SUMMARIZE SELECT * FROM duckdb_temporary_files()": "duckdb_temporary_files() is not allowed",
    "SELECT 1 UNION ALL SELECT count(*) FROM duckdb_secrets()": "duckdb_secrets() is not allowed",
}


@pytest.mark.parametrize("sql", list(REVEALING))
def test_revealing_functions_are_refused_with_a_reason(db, sql):
    with pytest.raises(QueryRefused) as info:
        run(db, sql)
    message = str(info.value)
    assert REVEALING[sql] in message
    assert str(db.parent) not in message and "stored_secrets" not in message


def test_without_the_gate_these_reveal_paths(db):
    # Why the gate is needed: the sandboxed reader alone shows the data path and the secret directory.
    with sandboxed_reader(db) as con:
        (path,) = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
        (secrets,) = con.execute("SELECT current_setting('secret_directory')").fetchone()
    assert path == str(db) and secrets


CATALOG_QUERIES = [
    "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_name = 'revenue'",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM information_schema.schemata",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM duckdb_columns() WHERE table_name = 'revenue'",
    "SELECT * FROM pragma_table_info('revenue')",
    "DESCRIBE revenue",
    "DESCRIBE SELECT month, sum(amount) FROM revenue GROUP BY month",
    "SUMMARIZE revenue",
    "SUMMARIZE SELECT amount FROM revenue",
    "SHOW revenue",
    "SHOW TABLES",
    "SHOW ALL TABLES",
    "SHOW DATABASES",
    "SELECT * FROM (DESCRIBE revenue)",
    "SELECT * FROM range(3) r, unnest([1, 2]) u",
    "SELECT * FROM generate_series(DATE '2024-01-01', DATE '2024-03-01', INTERVAL 1 MONTH)",
    "SELECT * FROM json_each('{\"a\": 1}')",
    "SELECT current_database(), version()",
]


@pytest.mark.parametrize("sql", CATALOG_QUERIES)
def test_catalog_and_describe_still_work_and_show_no_path(db, sql):
    r = run(db, sql)
    assert r.rows or sql.startswith("SELECT * FROM (DESCRIBE")
    text = json.dumps([r.columns, r.rows], default=str)
    assert str(db.parent) not in text and "stored_secrets" not in text  # the catalog name is the file stem only


def test_a_workspace_table_named_like_a_system_view_is_readable(db):
    with writer(db) as con:
        con.execute("CREATE TABLE pg_settings AS SELECT 'mine' AS name")
    assert run(db, "SELECT name FROM pg_settings").rows == [["mine"]]
    with pytest.raises(QueryRefused, match="pg_settings is not allowed"):
        run(db, "SELECT * FROM pg_catalog.pg_settings")  # qualified: the system view, still refused


class _Unserialisable:
    """A connection whose parser cannot give a parse tree (as for statements json_serialize_sql rejects)."""

    def __init__(self, con, *, raise_it: bool):
        self.con, self.raise_it = con, raise_it

    def execute(self, q, params=None):
        if "json_serialize_sql" in q:
            if self.raise_it:
                raise duckdb.ParserException("no tree")
            return self.con.execute("SELECT '{\"error\": true, \"error_message\": \"Only SELECT statements can be serialized\"}'")
        return self.con.execute(q, params)


@pytest.mark.parametrize("raise_it", [False, True])
def test_sql_without_a_parse_tree_is_refused(db, raise_it):
    with sandboxed_reader(db) as con:
        with pytest.raises(QueryRefused, match="could not be checked, so it is refused"):
            check_functions(_Unserialisable(con, raise_it=raise_it), "DESCRIBE revenue")
        check_functions(con, "DESCRIBE revenue")  # the real parser gives DESCRIBE a tree


def test_pivot_statements_are_refused(db):
    with pytest.raises(QueryRefused, match="MULTI"):
        run(db, "PIVOT revenue ON month USING sum(amount)")


def test_gate_lists_name_real_functions():
    with duckdb.connect() as con:
        table_functions = {r[0] for r in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE function_type IN ('table', 'table_macro')").fetchall()}
        every = {r[0] for r in con.execute("SELECT function_name FROM duckdb_functions()").fetchall()}
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE internal").fetchall()}
    assert sandbox.ALLOWED_TABLE_FUNCTIONS <= table_functions  # no typo: each allowed name exists
    assert not sandbox.ALLOWED_TABLE_FUNCTIONS & set(sandbox.DENIED_FUNCTIONS)
    unknown = set(sandbox.DENIED_FUNCTIONS) - every - views - {"getenv", "database_list", "storage_info", "metadata_info",
                                                                "database_size", "platform", "user_agent"}
    assert not unknown, unknown
    # Every revealing table function this DuckDB has is either denied with a reason or not allowed.
    for name in ("duckdb_settings", "duckdb_databases", "duckdb_temporary_files", "duckdb_secrets", "duckdb_extensions",
                 "duckdb_memory", "which_secret", "duckdb_logs", "pragma_storage_info", "query", "query_table"):
        assert name in table_functions | views and name in sandbox.DENIED_FUNCTIONS
