"""Ingest of messy CSV/XLSX exports into a real DuckDB file: types, exact values, notes, errors."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import openpyxl
import pytest
from messy_files import CSV, late_na_csv, write_csv, write_xlsx

from cfo_desk.analytics import ingest
from cfo_desk.config import get_settings
from cfo_desk.analytics.ingest import IngestError, ingest_file, safe_table_name, sheet_labels
from cfo_desk.analytics.store import workspace_lock

D = dt.date
DEC = Decimal


def query(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def types(db: Path, table: str) -> dict[str, str]:
    sql = "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = '{}' ORDER BY column_index"
    return dict(query(db, sql.format(table)))


def column(db: Path, table: str, name: str) -> list:
    return [r[0] for r in query(db, f'SELECT "{name}" FROM "{table}"')]


def ingest_csv(tmp_path: Path, name: str, data: bytes | None = None, table: str = "t", **kw) -> ingest.IngestedTable:
    path = write_csv(tmp_path, name, data)
    [result] = ingest_file(tmp_path / "ws.duckdb", path, original_name=name, table_names={None: table}, **kw)
    return result


def test_bom_semicolon_crlf_european_numbers_and_dotted_dates(tmp_path):
    r = ingest_csv(tmp_path, "bank_eu.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {
        "buchungstag": "DATE", "valuta": "DATE", "betrag": "DECIMAL(18,2)", "konto": "VARCHAR", "text": "VARCHAR"
    }
    assert [c.name for c in r.columns] == list(types(db, "t"))  # BOM not part of the first name
    assert column(db, "t", "buchungstag") == [D(2024, 12, 31), D(2024, 1, 2), D(2024, 3, 15)]
    # valuta fits both orders; the unambiguous day-first column decides.
    assert column(db, "t", "valuta") == [D(2024, 2, 1), D(2024, 2, 3), D(2024, 2, 4)]
    assert (r.date_order, r.ambiguous_date_columns) == ("DMY", ["valuta"])
    assert column(db, "t", "betrag") == [DEC("1234.56"), DEC("-7.50"), DEC("12000.00")]
    assert column(db, "t", "konto") == ["0815", "0816", "0817"]
    assert column(db, "t", "text") == ["Miete", "Kaffee", "Bonus"]
    assert any("European format" in n and "'betrag'" in n for n in r.notes)
    assert r.row_count == 3


def test_tab_delimited_with_quoted_newlines_and_quotes(tmp_path):
    r = ingest_csv(tmp_path, "notes.tsv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"id": "BIGINT", "memo": "VARCHAR", "amount": "BIGINT"}
    assert query(db, "SELECT * FROM t") == [
        (1, "first line\nsecond line", 10), (2, 'He said "hi"', 20), (3, "plain", 30)
    ]
    assert r.row_count == 3 and r.notes == []


def test_windows_1252_file_is_transcoded_with_a_note(tmp_path):
    assert b"\x80" in CSV["cp1252.csv"]  # the euro byte DuckDB's latin-1 decoder rejects
    r = ingest_csv(tmp_path, "cp1252.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"kunde": "VARCHAR", "betrag": "DECIMAL(18,2)", "ort": "VARCHAR"}
    assert query(db, "SELECT * FROM t") == [("Müller", DEC("1234.50"), "Zürich"), ("Café Noir", DEC("7.00"), "Genève")]
    assert "Read as Windows-1252 / latin-1 (the file is not UTF-8)" in r.notes


def test_utf16_unicode_text_export(tmp_path):
    ingest_csv(tmp_path, "utf16.txt")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"name": "VARCHAR", "amount": "DECIMAL(18,2)"}
    assert query(db, "SELECT * FROM t") == [("Müller", DEC("1.50"))]


def test_us_money_percentages_negatives_codes_and_null_tokens(tmp_path):
    r = ingest_csv(tmp_path, "us_money.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {
        "account": "BIGINT", "amount": "DECIMAL(18,2)", "units": "BIGINT", "margin": "DOUBLE",
        "rate": "DOUBLE", "refund": "DECIMAL(18,2)", "zip": "VARCHAR",
    }
    assert column(db, "t", "account") == [4000, 4010, 4020, 4030]
    assert column(db, "t", "amount") == [DEC("1234.56"), DEC("1000.00"), DEC("7.00"), None]  # n/a
    assert column(db, "t", "units") == [1200, 7, None, None]  # N/A and -
    assert column(db, "t", "margin") == [0.125, -0.03, 1.0, None]  # fractions; #N/A
    assert column(db, "t", "rate") == [1.0825, 0.9, 1.5, None]  # 4 decimals -> DOUBLE; empty
    assert column(db, "t", "refund") == [DEC("-123.45"), DEC("-45.10"), DEC("0.99"), DEC("-5.00")]
    assert column(db, "t", "zip") == ["02134", "10001", "94105", "00501"]  # leading zeros: codes
    notes = "\n".join(r.notes)
    assert "Column 'amount' read as numbers after removing $ and € and £ and thousands separators" in notes
    assert "Column 'refund' read as numbers after removing $; (123.45) read as -123.45; 123.45- read as -123.45" in (
        notes
    )
    assert "12.5% read as 0.125" in notes


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # ';' file, but another column is only US: "1,500" is US thousands.
        (b'us;amt\n"1,234.56";"1,500"\n"2.5";"2,000"\n', [1500, 2000]),
        # ',' file, but another column is only European: "1.500" is European thousands.
        (b'eu,amt\n"1.234,56",1.500\n"2,5",2.000\n', [1500, 2000]),
        # No evidence in the columns: the ';' delimiter means European.
        (b"amt;x\n1.500;a\n2.000;b\n", [1500, 2000]),
        (b"amt,x\n1.500,a\n2.000,b\n", [DEC("1.50"), DEC("2.00")]),
    ],
    ids=["semicolon-but-us", "comma-but-eu", "semicolon", "comma"],
)
def test_number_style_when_both_fit_follows_the_file(tmp_path, data, expected):
    ingest_csv(tmp_path, "style.csv", data)
    assert column(tmp_path / "ws.duckdb", "t", "amt") == expected


def test_codes_long_ids_and_mixed_percentages_stay_text(tmp_path):
    data = b"code,card,mixed,word\n00123,12345678901234567890,5%,1\n00456,1,0.5,two\n"
    r = ingest_csv(tmp_path, "text.csv", data)
    assert {c.type for c in r.columns} == {"VARCHAR"}
    assert query(tmp_path / "ws.duckdb", "SELECT * FROM t") == [
        ("00123", "12345678901234567890", "5%", "1"), ("00456", "1", "0.5", "two")
    ]


def test_na_after_default_sample_does_not_break_the_integer_column(tmp_path):
    r = ingest_csv(tmp_path, "late.csv", late_na_csv(20_500))
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"id": "BIGINT", "amount": "BIGINT"}
    assert r.row_count == 20_501
    assert query(db, "SELECT count(amount), sum(amount), max(id) FROM t") == [(20_500, 20_499 * 20_500, 20_500)]
    assert query(db, "SELECT amount FROM t WHERE id = 20500") == [(None,)]


def test_dates_iso_timestamps_month_names_and_default_month_first(tmp_path):
    r = ingest_csv(tmp_path, "dates.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {
        "dmy": "DATE", "mdy": "DATE", "ambiguous": "DATE", "iso": "DATE",
        "stamp": "TIMESTAMP", "named": "DATE", "dmy_time": "TIMESTAMP",
    }
    assert column(db, "t", "dmy") == [D(2024, 1, 13), D(2024, 2, 1)]
    assert column(db, "t", "mdy") == [D(2024, 1, 13), D(2024, 2, 1)]
    assert column(db, "t", "ambiguous") == [D(2024, 3, 4), D(2024, 5, 6)]  # MDY: unambiguous columns disagree
    assert (r.date_order, r.ambiguous_date_columns) == ("MDY", ["ambiguous"])
    assert any("month first (MM/DD/YYYY)" in n and "ambiguous" in n for n in r.notes)
    assert column(db, "t", "iso") == [D(2024, 12, 31), D(2024, 2, 29)]
    assert column(db, "t", "stamp") == [dt.datetime(2024, 1, 31, 13, 45), dt.datetime(2024, 2, 1, 0, 0, 1)]
    assert column(db, "t", "named") == [D(2024, 12, 31), D(2025, 1, 1)]
    assert column(db, "t", "dmy_time") == [dt.datetime(2024, 12, 25, 8, 30), dt.datetime(2024, 1, 1, 23, 59)]

    # The analyst switches the order: only the ambiguous column changes.
    r = ingest_csv(tmp_path, "dates.csv", date_order="DMY")
    assert (r.date_order, r.ambiguous_date_columns) == ("DMY", ["ambiguous"])
    assert column(db, "t", "ambiguous") == [D(2024, 4, 3), D(2024, 6, 5)]
    assert column(db, "t", "mdy") == [D(2024, 1, 13), D(2024, 2, 1)]


@pytest.mark.parametrize(
    ("name", "data", "order", "expected"),
    [
        ("dates_evidence.csv", None, "DMY", [D(2024, 4, 3), D(2024, 6, 5)]),  # other column is day-first
        ("dotted.csv", b"d\n01.02.2024\n03.04.2024\n", "DMY", [D(2024, 2, 1), D(2024, 4, 3)]),
        ("euro.csv", b"d;x\n01/02/2024;1,5\n03/04/2024;2,25\n", "DMY", [D(2024, 2, 1), D(2024, 4, 3)]),
        ("plain.csv", b"d,x\n01/02/2024,1.5\n03/04/2024,2\n", "MDY", [D(2024, 1, 2), D(2024, 3, 4)]),
        ("clear.csv", b"d\n01/02/2024\n01/13/2024\n", None, [D(2024, 1, 2), D(2024, 1, 13)]),
    ],
)
def test_date_order_rule(tmp_path, name, data, order, expected):
    r = ingest_csv(tmp_path, name, data)
    first = r.columns[0].name
    assert r.columns[0].type == "DATE"
    assert column(tmp_path / "ws.duckdb", "t", first) == expected
    assert r.date_order == order
    assert r.ambiguous_date_columns == ([first] if order else [])


def test_headers_blank_duplicate_keyword_digit_and_trailing_empty_columns(tmp_path):
    r = ingest_csv(tmp_path, "headers.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {
        "invoice_no": "VARCHAR", "amount": "BIGINT", "column_3": "VARCHAR", "amount_2": "DECIMAL(18,2)",
        "order_col": "VARCHAR", "col_2024_budget": "BIGINT", "net_pct": "DOUBLE",
    }
    assert query(db, "SELECT * FROM t") == [
        ("A-1", 10, "x", DEC("1.50"), "o1", 100, 0.05), ("A-2", 20, "y", DEC("2.50"), "o2", 200, 0.06)
    ]
    for note in [
        "Blank header in column 3 named column_3",
        "Duplicate header 'amount' renamed amount_2",
        "Dropped 2 empty columns with no header",
        "Skipped 1 empty row",
        "Header 'Net %' stored as net_pct",
    ]:
        assert note in r.notes
    assert not any("invoice_no" in n for n in r.notes)  # plain lowercasing is not worth a note
    assert r.row_count == 2


def test_short_rows_are_padded_with_nulls_and_noted(tmp_path):
    r = ingest_csv(tmp_path, "short_rows.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"a": "BIGINT", "b": "VARCHAR", "c": "BIGINT"}
    assert query(db, "SELECT * FROM t") == [
        (1, "x\ny", 3), (4, "5", None), (6, "7", 8), (9, None, None), (10, "11", None)
    ]
    assert "2 rows had fewer fields and were padded with empty values" in r.notes


@pytest.mark.parametrize("eol", ["\r\n", "\r", "\n"], ids=["crlf", "cr", "lf"])
def test_line_endings(tmp_path, eol):
    data = eol.join(["Date,Amount,Memo", '2024-01-31,"$1,234.50",rent', "2024-02-29,-7,\"two\nlines\"", ""]).encode()
    ingest_csv(tmp_path, "endings.csv", data)
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"date": "DATE", "amount": "DECIMAL(18,2)", "memo": "VARCHAR"}
    assert query(db, "SELECT * FROM t") == [
        (D(2024, 1, 31), DEC("1234.50"), "rent"), (D(2024, 2, 29), DEC("-7.00"), "two\nlines")
    ]


def test_title_row_above_the_header_is_skipped(tmp_path):
    r = ingest_csv(tmp_path, "title.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"date": "DATE", "amount": "BIGINT", "memo": "VARCHAR"}
    assert query(db, "SELECT * FROM t") == [(D(2024, 10, 1), 5, "a"), (D(2024, 10, 2), 6, None)]
    # Only the title note: the one-field title row is not counted as a short row.
    assert r.notes == ["Skipped 1 title row above the header ('ACME Corp - Sales Q4')"]


def test_header_only_file_gives_an_empty_text_table(tmp_path):
    r = ingest_csv(tmp_path, "header_only.csv")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"date": "VARCHAR", "amount": "VARCHAR", "memo": "VARCHAR"}
    assert query(db, "SELECT count(*) FROM t") == [(0,)]
    assert r.row_count == 0 and any("no data rows" in n for n in r.notes)


def _seed_previous_table(tmp_path: Path) -> list[tuple]:
    ingest_csv(tmp_path, "previous.csv", b"id,amount\n1,10.50\n2,20.25\n")
    return query(tmp_path / "ws.duckdb", "SELECT * FROM t")


def _tables(db: Path) -> list[str]:
    return [r[0] for r in query(db, "SELECT table_name FROM duckdb_tables() ORDER BY 1")]


def test_too_many_fields_is_a_clear_error_and_the_previous_table_survives(tmp_path):
    before = _seed_previous_table(tmp_path)
    with pytest.raises(IngestError) as err:
        ingest_csv(tmp_path, "too_many.csv")
    assert str(err.value).startswith(
        "too_many.csv: row 3 has 4 fields but the header names only 3 columns (the row starts 'Acme')"
    )
    assert query(tmp_path / "ws.duckdb", "SELECT * FROM t") == before == [(1, DEC("10.50")), (2, DEC("20.25"))]


def _bad_xlsx(path: Path) -> Path:
    path.write_bytes(b"this is not a zip file")
    return path


def _empty_book(path: Path) -> Path:
    return write_xlsx(path, {"Sheet1": [], "Notes": [[None, "   "]]})


@pytest.mark.parametrize(
    ("name", "make", "label", "message"),
    [
        ("empty.csv", None, None, "empty.csv: the file is empty"),
        ("blank.csv", b"\xef\xbb\xbf\r\n\r\n", None, "blank.csv: the file is empty"),
        ("garbage.csv", None, None, "garbage.csv: the file is not a text CSV (it contains binary data)"),
        ("workbook_renamed.csv", None, None, "workbook_renamed.csv: the file is a zip archive"),
        ("book.xlsx", _bad_xlsx, "Sheet1", "book.xlsx: the file is not a valid Excel workbook"),
        ("empty_book.xlsx", _empty_book, "Sheet1", "empty_book.xlsx: the workbook has no non-empty worksheet"),
        ("report.pdf", b"%PDF-1.4", None, "report.pdf: unsupported file type .pdf; accepted: .csv, .tsv"),
        ("old.xls", b"\xd0\xcf\x11\xe0", None, "old.xls: unsupported file type .xls"),
    ],
)
def test_bad_files_raise_specific_errors_and_leave_the_database_unchanged(tmp_path, name, make, label, message):
    before = _seed_previous_table(tmp_path)
    path = tmp_path / name
    if callable(make):
        make(path)
    else:
        path.write_bytes(CSV[name] if make is None else make)
    with pytest.raises(IngestError) as err:
        sheet_labels(path, name)
    assert str(err.value).startswith(message)
    with pytest.raises(IngestError) as err:
        ingest_file(tmp_path / "ws.duckdb", path, original_name=name, table_names={label: "t"})
    assert str(err.value).startswith(message)
    assert _tables(tmp_path / "ws.duckdb") == ["t"]
    assert query(tmp_path / "ws.duckdb", "SELECT * FROM t") == before


def _workbook(path: Path) -> Path:
    return write_xlsx(
        path,
        {
            "Summary": [],
            "Q1 Sales": [
                [],
                ["ACME Corp: Q1 sales"],
                [None, None],
                ["Date", "Customer", "Amount", "Margin", "Paid", "Text Amount", None, "Units", " "],
                [dt.datetime(2024, 1, 31), "Acme", 1234.5, 0.125, True, "$1,234.56", "late fee", 3, " "],
                [dt.datetime(2024, 2, 29), " Beta ", 99.99, 0.3, False, "(12.00)", None, 4, "N/A"],
                [dt.datetime(2024, 3, 1), "N/A", 7, 0.25, None, "-", None, 5],
            ],
            "FX": [["Pair", "Rate", "At"], ["EURUSD", 1.08251, dt.datetime(2024, 1, 31, 16, 30)]],
        },
        formats={"Q1 Sales": {"D4": "0.0%", "D5": "0.0%"}},
    )


def test_xlsx_sheets_become_tables_with_the_same_cleanup(tmp_path):
    path = _workbook(tmp_path / "Sales 2024.xlsx")
    labels = sheet_labels(path, "Sales 2024.xlsx")
    assert labels == ["Q1 Sales", "FX"]
    taken: set[str] = set()
    names = {}
    for label in labels:
        names[label] = safe_table_name(label, taken)
        taken.add(names[label])
    assert names == {"Q1 Sales": "q1_sales", "FX": "fx"}
    db = tmp_path / "ws.duckdb"
    q1, fx = ingest_file(db, path, original_name="Sales 2024.xlsx", table_names=names)
    assert (q1.table_name, q1.sheet_name, q1.row_count, fx.sheet_name) == ("q1_sales", "Q1 Sales", 3, "FX")
    assert types(db, "q1_sales") == {
        "date": "DATE", "customer": "VARCHAR", "amount": "DECIMAL(18,2)", "margin": "DOUBLE", "paid": "BOOLEAN",
        "text_amount": "DECIMAL(18,2)", "column_7": "VARCHAR", "units": "BIGINT",
    }
    assert [(c.name, c.type) for c in q1.columns] == list(types(db, "q1_sales").items())
    assert query(db, "SELECT * FROM q1_sales") == [
        (D(2024, 1, 31), "Acme", DEC("1234.50"), 0.125, True, DEC("1234.56"), "late fee", 3),
        (D(2024, 2, 29), "Beta", DEC("99.99"), 0.3, False, DEC("-12.00"), None, 4),
        (D(2024, 3, 1), None, DEC("7.00"), 0.25, None, None, None, 5),
    ]
    assert "Skipped 1 title row above the header ('ACME Corp: Q1 sales')" in q1.notes
    assert "Blank header in column 7 named column_7" in q1.notes
    assert "Dropped 1 empty column with no header" in q1.notes
    assert types(db, "fx") == {"pair": "VARCHAR", "rate": "DOUBLE", "at_col": "TIMESTAMP"}  # AT is an SQL keyword
    assert "Header 'At' stored as at_col" in fx.notes
    assert query(db, "SELECT * FROM fx") == [("EURUSD", 1.08251, dt.datetime(2024, 1, 31, 16, 30))]


def test_failure_in_a_later_sheet_rolls_back_every_table(tmp_path, monkeypatch):
    before = _seed_previous_table(tmp_path)  # table "t" from a CSV
    path = _workbook(tmp_path / "book.xlsx")
    real_prepare = ingest._prepare

    def prepare_with_broken_fx(con, source, *args):
        prepared = real_prepare(con, source, *args)
        if source.label == "FX":
            prepared.build = lambda con, target, progress=None: con.execute(f"CREATE TABLE {target} AS SELECT * FROM no_such_table")
        return prepared

    monkeypatch.setattr(ingest, "_prepare", prepare_with_broken_fx)
    # The patch must reach the parse: in-process (the worker's copy step is tested in test_hostile_uploads).
    monkeypatch.setenv("CFO_DESK_INGEST_MEMORY_GB", "0")
    get_settings.cache_clear()
    with pytest.raises(IngestError, match=r"^book\.xlsx: could not be stored"):
        ingest_file(tmp_path / "ws.duckdb", path, original_name="book.xlsx", table_names={"Q1 Sales": "t", "FX": "fx"})
    # "t" was replaced inside the transaction before FX failed: the rollback restored it.
    assert _tables(tmp_path / "ws.duckdb") == ["t"]
    assert query(tmp_path / "ws.duckdb", "SELECT * FROM t") == before


def test_unknown_or_empty_worksheet_is_an_error(tmp_path):
    path = _workbook(tmp_path / "book.xlsx")
    db = tmp_path / "ws.duckdb"
    with pytest.raises(IngestError, match=r"^book\.xlsx: worksheet 'Summary' is empty$"):
        ingest_file(db, path, original_name="book.xlsx", table_names={"FX": "fx", "Summary": "s"})
    with pytest.raises(IngestError, match=r"^book\.xlsx: no worksheet named 'Nope'$"):
        ingest_file(db, path, original_name="book.xlsx", table_names={"Nope": "n"})
    assert not db.exists() or _tables(db) == []


@pytest.mark.parametrize(
    ("raw", "taken", "expected"),
    [
        ("Q4 Sales (EUR).csv", set(), "q4_sales_eur"),
        ("2024 Budget.xlsx", set(), "t_2024_budget"),
        ("Order", set(), "order_data"),
        ("select.csv", set(), "select_data"),
        ("Umsätze Q1", set(), "umsatze_q1"),
        ("???", set(), "data"),
        ("Q4 Sales (EUR).csv", {"Q4_SALES_EUR", "q4_sales_eur_2"}, "q4_sales_eur_3"),
        ("x" * 100, set(), "x" * 60),
        ("x" * 100, {"x" * 60}, "x" * 58 + "_2"),
    ],
)
def test_safe_table_name(raw, taken, expected):
    name = safe_table_name(raw, taken)
    assert name == expected
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,59}", name)
    con = duckdb.connect()
    try:
        con.execute(f"CREATE TABLE {name} (x INTEGER)")  # usable unquoted
    finally:
        con.close()


def test_sheet_labels_for_csv_and_argument_checks(tmp_path):
    path = write_csv(tmp_path, "us_money.csv")
    assert sheet_labels(path, "us_money.csv") == [None]
    with pytest.raises(ValueError, match="date_order"):
        ingest_file(tmp_path / "ws.duckdb", path, original_name="x.csv", table_names={None: "t"}, date_order="YMD")
    with pytest.raises(ValueError, match="CSV"):
        ingest_file(tmp_path / "ws.duckdb", path, original_name="us_money.csv", table_names={"Sheet1": "t"})


def test_ingest_waits_for_the_workspace_lock(tmp_path):
    db = tmp_path / "ws.duckdb"
    path = write_csv(tmp_path, "notes.tsv")
    done = threading.Event()

    def run():
        ingest_file(db, path, original_name="notes.tsv", table_names={None: "t"})
        done.set()

    with workspace_lock(db):
        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()  # blocked while an agent connection holds the workspace
    worker.join(10)
    assert done.is_set() and query(db, "SELECT count(*) FROM t") == [(3,)]


# ----------------------------------------------------------------------------- what ingest says


def test_mixed_utf8_and_windows_1252_lines_are_each_read_right(tmp_path):
    data = (
        "name,city,amount\n".encode()
        + "José,São Paulo,10\n".encode()
        + "Zoë,Genève,20\n".encode("cp1252")  # a line appended by a Windows tool
        + "Ann,Köln,30\n".encode()
        + "Müller,Zürich,40\n".encode("cp1252")
    )
    r = ingest_csv(tmp_path, "mixed.csv", data)
    db = tmp_path / "ws.duckdb"
    assert column(db, "t", "name") == ["José", "Zoë", "Ann", "Müller"]  # no "JosÃ©"
    assert column(db, "t", "city") == ["São Paulo", "Genève", "Köln", "Zürich"]
    assert [n for n in r.notes if "encoding" in n.lower()] == [
        "Mixed encodings: 2 lines (3, 5) are not UTF-8 and were read as Windows-1252 / latin-1;"
        " the rest of the file is UTF-8. Check accented names on those lines"
    ]


def test_mixed_encoding_line_numbers_hold_across_blocks(tmp_path):
    # Over 4 MB of UTF-8 lines (blocks of whole lines are decoded at once), then one cp1252 line.
    body = b"".join(f"Café {i},{i}\n".encode() for i in range(400_000))
    data = b"name,amount\n" + body + "Zoë,1\n".encode("cp1252") + body[:2000]
    bad_line = 1 + 400_000 + 1
    r = ingest_csv(tmp_path, "big_mixed.csv", data)
    assert f"Mixed encodings: 1 line ({bad_line}) is not UTF-8" in " ".join(r.notes)
    assert query(tmp_path / "ws.duckdb", f"SELECT name FROM t WHERE rowid = {bad_line - 2}") == [("Zoë",)]


def test_unbalanced_quote_is_read_without_quoting_and_said(tmp_path):
    data = b'id,name,amount\n1,Acme,100\n2,"Beta Corp,200\n3,Gamma,300\n'
    r = ingest_csv(tmp_path, "quote.csv", data)
    db = tmp_path / "ws.duckdb"
    assert query(db, "SELECT * FROM t") == [(1, "Acme", 100), (2, '"Beta Corp', 200), (3, "Gamma", 300)]
    assert r.notes == [
        'Line 3 opens a quote (") that is never closed, so the file was read without quoting:'
        " quote characters are kept in the values. Check that line in the file"
    ]
    # Balanced quotes, and quotes inside a value, are plain CSV: no note.
    assert ingest_csv(tmp_path, "fine.csv", b'id,name\n1,"Acme, Inc."\n2,Big "B" Co\n').notes == []


def test_unbalanced_quote_that_splits_a_quoted_value_names_the_line(tmp_path):
    data = b'id,name,amount\n1,"Acme, Inc.",100\n2,"Beta,200\n3,Gamma,300\n'
    with pytest.raises(IngestError, match=r"Line 3 opens a quote that is never closed"):
        ingest_csv(tmp_path, "split.csv", data)
    assert not (tmp_path / "ws.duckdb").exists() or query(tmp_path / "ws.duckdb", "SELECT count(*) FROM duckdb_tables()") == [(0,)]


def hidden_workbook(path: Path) -> Path:
    wb = openpyxl.Workbook()
    wb.active.title = "Data"
    wb.active.append(["month", "revenue"])
    wb.active.append(["2024-01-01", 100])
    for title, state in (("Lookup", "hidden"), ("Secret", "veryHidden"), ("Blank", "hidden")):
        ws = wb.create_sheet(title)
        if title != "Blank":
            ws.append(["code", "rate"])
            ws.append(["A", 0.5])
        ws.sheet_state = state
    wb.save(path)
    return path


def test_hidden_worksheets_are_skipped_by_default_and_said(tmp_path):
    path = hidden_workbook(tmp_path / "book.xlsx")
    assert sheet_labels(path, "book.xlsx") == ["Data"]
    [r] = ingest_file(tmp_path / "ws.duckdb", path, original_name="book.xlsx", table_names={"Data": "data"})
    assert r.notes == [
        "Skipped hidden worksheets 'Lookup' (hidden), 'Secret' (very hidden):"
        " hidden sheets are not loaded unless the upload includes them"
    ]
    assert query(tmp_path / "ws.duckdb", "SELECT table_name FROM duckdb_tables()") == [("data",)]


def test_hidden_worksheets_load_when_included(session, tmp_path):
    from cfo_desk.services import datasets as ds_svc  # noqa: PLC0415
    from cfo_desk.services import workspaces as ws_svc  # noqa: PLC0415

    ws = ws_svc.create_workspace(session=session, name="Hidden")
    data = hidden_workbook(tmp_path / "book.xlsx").read_bytes()
    (only,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="book.xlsx", data=data)
    assert only.sheet_name == "Data" and "Skipped hidden worksheets" in only.notes[0]
    made = ds_svc.upload_file(
        session=session, workspace_id=ws.id, filename="book.xlsx", data=data, on_conflict="replace", include_hidden_sheets=True
    )
    assert {d.sheet_name: d.notes for d in made} == {
        "Data": [],
        "Lookup": ["Worksheet 'Lookup' is hidden in the workbook; it was loaded because hidden worksheets were included"],
        "Secret": ["Worksheet 'Secret' is very hidden in the workbook; it was loaded because hidden worksheets were included"],
    }


def test_a_workbook_whose_data_is_all_hidden_says_so(tmp_path):
    wb = openpyxl.Workbook()
    wb.active.title = "Cover"  # empty
    ws = wb.create_sheet("Numbers")
    ws.append(["a"])
    ws.append([1])
    ws.sheet_state = "hidden"
    wb.save(tmp_path / "all_hidden.xlsx")
    with pytest.raises(IngestError, match=r"all_hidden.xlsx: every non-empty worksheet is hidden \('Numbers'\)"):
        sheet_labels(tmp_path / "all_hidden.xlsx", "all_hidden.xlsx")
    assert sheet_labels(tmp_path / "all_hidden.xlsx", "all_hidden.xlsx", include_hidden=True) == ["Numbers"]


def test_types_are_tried_on_a_sample_and_checked_over_every_row(tmp_path):
    """Past SAMPLE_ROWS, later rows still decide: a late value that breaks a column's format keeps
    it as text (said, with the count), a late decimal widens whole numbers, a late day above 12
    settles the date order, and a column empty in the sample is typed from its later values."""
    n = ingest.SAMPLE_ROWS + 5_000
    lines = ["id,amount,qty,booked,late,code"]
    for i in range(n):
        amount = "oops" if i in (n - 3, n - 1) else f"{i}.50"
        qty = "2.25" if i == n - 2 else str(i % 7)
        booked = "13/02/2024" if i == n - 1 else f"0{1 + i % 9}/0{1 + i % 9}/2024"
        late = f"{i}.5" if i >= ingest.SAMPLE_ROWS else ""
        lines.append(f"{i},{amount},{qty},{booked},{late},C{i:06d}")
    r = ingest_csv(tmp_path, "long.csv", ("\n".join(lines) + "\n").encode())
    assert r.row_count == n
    assert types(tmp_path / "ws.duckdb", "t") == {
        "id": "BIGINT", "amount": "VARCHAR", "qty": "DECIMAL(18,2)", "booked": "DATE", "late": "DECIMAL(18,2)", "code": "VARCHAR"
    }
    assert (
        f"Column 'amount' holds numbers in its first {ingest.SAMPLE_ROWS:,} rows, but 2 later values do not fit;"
        " the column is kept as text"
    ) in r.notes
    assert r.date_order is None  # 13/02 makes booked day-first: nothing was assumed
    db = tmp_path / "ws.duckdb"
    assert query(db, f"SELECT amount, qty, booked FROM t WHERE id = {n - 1}") == [("oops", DEC(f"{(n - 1) % 7}.00"), D(2024, 2, 13))]
    assert query(db, "SELECT booked FROM t WHERE id = 1") == [(D(2024, 2, 2),)]


@pytest.mark.parametrize("column", ["day", "amount"])
def test_padded_values_and_null_tokens_after_a_clean_sample(tmp_path, column):
    """The first pass reads plain-cast columns without cleaning them when their sample needed none;
    padded values and NULL tokens later in the file still come out as cleaning makes them (one
    column at a time, so no other column's misfit makes the table be written again)."""
    n = ingest.SAMPLE_ROWS + 20
    lines = ["day,amount,memo"]
    for i in range(n):
        late = i >= ingest.SAMPLE_ROWS + 10
        day, amount = f"2024-01-{1 + i % 28:02d}", f"{i}.5"
        if late and column == "day":
            day = "\u00a02024-03-07 " if i % 2 else "n/a"
        if late and column == "amount":
            amount = " 7.25\t" if i % 2 else "-"
        lines.append(f"{day},{amount},m{i}")
    r = ingest_csv(tmp_path, "padded.csv", ("\n".join(lines) + "\n").encode())
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"day": "DATE", "amount": "DECIMAL(18,2)", "memo": "VARCHAR"}
    last, before = query(db, f"SELECT {column} FROM t WHERE memo = 'm{n - 1}'"), query(db, f"SELECT {column} FROM t WHERE memo = 'm{n - 2}'")
    assert last == [(D(2024, 3, 7),)] if column == "day" else [(DEC("7.25"),)]
    assert before == [(None,)]
    assert query(db, f"SELECT count(*), count({column}) FROM t") == [(n, n - 5)]
    assert not [x for x in r.notes if "do not fit" in x or "does not fit" in x]


def test_a_late_row_with_an_extra_field_is_named_by_its_line(tmp_path):
    """Far into a file (past the sniffer's sample), one unquoted thousands separator: the error names
    the line and how it starts (DuckDB reads the lines in parallel; the line number still comes through)."""
    lines = ["id,memo,amount"] + [f"{i},x,{i}.5" if i != 25_000 else f"{i},x,$1,234.50" for i in range(30_000)]
    with pytest.raises(IngestError) as info:
        ingest_csv(tmp_path, "late.csv", ("\n".join(lines) + "\n").encode())
    assert str(info.value) == (
        "late.csv: line 25002 has 4 fields where the lines before it have 3 (the line starts '25000,x,$1,234.50');"
        " a value probably contains an unquoted delimiter. Quote that value, then upload again."
    )


def test_plain_shapes_in_the_sample_still_read_later_shapes_right(tmp_path):
    """A column whose sample is all plain shapes (2024-01-31, 31/01/2024, 1234.5) is written with a
    plain cast; later values in other shapes it takes (2024/3/7, 7.3.2024, $1,234.50) are read as
    the general parser reads them, and a later code with a leading zero still keeps its column as
    text, with the count of such values."""
    n = ingest.SAMPLE_ROWS + 20
    lines = ["day,booked,paid,amount,rate,ref"]
    for i in range(n):
        late = i >= ingest.SAMPLE_ROWS + 10  # past the sample (which may hold a few more rows than SAMPLE_ROWS)
        day = "2024/3/7" if late else f"2024-01-{1 + i % 28:02d}"
        booked = "7.3.2024" if late else f"{13 + i % 15}/01/2024"
        paid = "8/3/24" if i == n - 3 else f"{13 + i % 15}/02/2024"  # strptime's %Y would make it year 24
        amount = '"$1,234.50"' if late else f"{i}.5"
        amount = "1.125" if i == n - 2 else amount
        rate = "2.125" if i == n - 2 else f"{i % 100}.25"  # a cast to DECIMAL(18,2) would round it
        ref = "007" if i == n - 1 else str(100 + i)
        lines.append(f"{day},{booked},{paid},{amount},{rate},{ref}")
    r = ingest_csv(tmp_path, "plain.csv", ("\n".join(lines) + "\n").encode())
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"day": "DATE", "booked": "DATE", "paid": "DATE", "amount": "DOUBLE", "rate": "DOUBLE", "ref": "VARCHAR"}
    assert query(db, "SELECT day, booked, amount, ref FROM t WHERE ref = '007'") == [(D(2024, 3, 7), D(2024, 3, 7), 1234.5, "007")]
    assert query(db, f"SELECT amount, rate FROM t WHERE ref = '{100 + n - 2}'") == [(1.125, 2.125)]
    assert query(db, f"SELECT paid FROM t WHERE ref = '{100 + n - 3}'") == [(D(2024, 3, 8),)]
    assert query(db, "SELECT day, booked, amount FROM t WHERE ref = '100'") == [(D(2024, 1, 1), D(2024, 1, 13), 0.5)]
    assert (
        f"Column 'ref' holds whole numbers in its first {ingest.SAMPLE_ROWS:,} rows, but 1 later value does not fit;"
        " the column is kept as text"
    ) in r.notes


# ----------------------------------------------------------------------------- real exports


def test_two_digit_year_dates_with_the_pivot_said(tmp_path):
    data = b"posted,value_date,amount\n6/12/15,23-Jan-15,1\n2/20/19,14-Feb-15,2\n1/2/70,25-Jan-99,3\n"
    r = ingest_csv(tmp_path, "bank.csv", data)
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"posted": "DATE", "value_date": "DATE", "amount": "BIGINT"}
    assert column(db, "t", "posted") == [D(2015, 6, 12), D(2019, 2, 20), D(1970, 1, 2)]  # 2/20 makes it month-first
    assert column(db, "t", "value_date") == [D(2015, 1, 23), D(2015, 2, 14), D(1999, 1, 25)]
    assert (
        "Two-digit years in posted, value_date read as 2000-2068 for 00-68 and 1969-1999 for 69-99 (23-Jan-15 is 2015-01-23)"
        in r.notes
    )
    # The profile's min/max now sort as dates, not as text ("14-Feb-15" < "25-Jan-15").
    assert query(db, "SELECT min(value_date), max(value_date) FROM t") == [(D(1999, 1, 25), D(2015, 2, 14))]


def test_month_name_dates(tmp_path):
    data = b"a;b;c\n23-Jan-15;Jan 23, 2015;December 24, 2022\n05-Mar-2024;Feb 1, 2016;January 2, 2023\n"
    ingest_csv(tmp_path, "months.csv", data)
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"a": "DATE", "b": "DATE", "c": "DATE"}
    assert query(db, "SELECT * FROM t") == [
        (D(2015, 1, 23), D(2015, 1, 23), D(2022, 12, 24)), (D(2024, 3, 5), D(2016, 2, 1), D(2023, 1, 2))
    ]


def test_swiss_apostrophe_thousands(tmp_path):
    r = ingest_csv(tmp_path, "ch.csv", "betrag,menge\n11'373.94,1’000\n-2'000.50,12\n".encode())
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"betrag": "DECIMAL(18,2)", "menge": "BIGINT"}
    assert query(db, "SELECT * FROM t") == [(DEC("11373.94"), 1000), (DEC("-2000.50"), 12)]
    assert (
        "Column 'betrag' read as numbers after removing thousands separators (apostrophes: 11'373.94 read as 11373.94)"
        in r.notes
    )


def test_cr_dr_and_trailing_minus_amounts(tmp_path):
    data = b"memo,amount,net\nfee,12.50 DR,5.00-\ndeposit,1,000.00 CR,7.25\nrefund,3.10cr,(1.00)\n"
    data = data.replace(b"1,000.00 CR", b'"1,000.00 CR"')
    r = ingest_csv(tmp_path, "statement.csv", data)
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"memo": "VARCHAR", "amount": "DECIMAL(18,2)", "net": "DECIMAL(18,2)"}
    assert query(db, "SELECT amount, net FROM t") == [
        (DEC("-12.50"), DEC("-5.00")), (DEC("1000.00"), DEC("7.25")), (DEC("3.10"), DEC("-1.00"))
    ]
    assert any("CR read as positive and DR as negative" in n and "'amount'" in n for n in r.notes)
    assert any("123.45- read as -123.45" in n and "'net'" in n for n in r.notes)


def test_scientific_notation_is_read_as_double(tmp_path):
    r = ingest_csv(tmp_path, "sci.csv", b"x,y\n1.5E+06,2.5e-3\n2E3,1\n")
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"x": "DOUBLE", "y": "DOUBLE"}
    assert query(db, "SELECT * FROM t") == [(1_500_000.0, 0.0025), (2000.0, 1.0)]  # 0.0025 not rounded to 0.00
    assert any("scientific notation: 1.5E+06 read as 1500000" in n for n in r.notes)


def test_percent_strings_are_fractions(tmp_path):
    ingest_csv(tmp_path, "pct.csv", b"margin\n12.5%\n-3%\n")
    assert column(tmp_path / "ws.duckdb", "t", "margin") == [0.125, -0.03]


@pytest.mark.parametrize("wide", [False, True], ids=["one pass", "wide"])
def test_repeated_header_and_trailing_total_rows(tmp_path, wide):
    pad = ",".join(f"x{i}" for i in range(30)) if wide else ""  # > 25 columns take the materialised path
    cells = ",".join("1" for _ in range(30)) if wide else ""
    sep = "," if wide else ""
    lines = [f"date,customer,amount{sep}{pad}"]
    lines += [f"2024-01-0{d},Acme,{d}00.00{sep}{cells}" for d in range(1, 4)]
    lines += [f"date,customer,amount{sep}{pad}"]  # the export repeats its header mid-file ...
    lines += [f"2024-01-0{d},Beta,{d}0.00{sep}{cells}" for d in range(4, 6)]
    lines += [f"Total,,390.00{sep}", f"date,customer,amount{sep}{pad}"]  # ... and ends with a total and the header
    r = ingest_csv(tmp_path, "export.csv", ("\n".join(lines) + "\n").encode())
    db = tmp_path / "ws.duckdb"
    assert {k: v for k, v in types(db, "t").items() if k in ("date", "customer", "amount")} == {
        "date": "DATE", "customer": "VARCHAR", "amount": "DECIMAL(18,2)"
    }  # not text: the repeated header and the total are not data
    assert r.row_count == 5
    assert query(db, "SELECT sum(amount) FROM t") == [(DEC("690.00"),)]  # not doubled by the total row
    assert "Skipped 2 repeated header rows (row 5, 9)" in r.notes
    assert (
        "Left out 1 total row at the end (row 8: 'Total'), so sums over the table do not count them twice;"
        " the kept original file still has them"
    ) in r.notes


@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_titles_blank_lines_and_a_quoted_header_before_the_data(tmp_path, eol):
    """The one-pass read skips the lines up to the header (read_csv counts lines, blank ones too;
    rows are numbered by records, as everywhere): the rows, the notes' row numbers and the types
    come out as they do in the serial read."""
    lines = ["ACME Corp - Sales", "Period: Q4", "", '"Invoice Date","Amount","Memo"']
    lines += ['2024-10-01,5,"a, b"', "2024-10-02,6,c", "", "Total,11,"]
    r = ingest_csv(tmp_path, "report.csv", (eol.join(lines) + eol).encode())
    db = tmp_path / "ws.duckdb"
    assert types(db, "t") == {"invoice_date": "DATE", "amount": "BIGINT", "memo": "VARCHAR"}
    assert query(db, "SELECT * FROM t ORDER BY 1") == [(D(2024, 10, 1), 5, "a, b"), (D(2024, 10, 2), 6, "c")]
    assert "Skipped 2 title rows above the header ('ACME Corp - Sales', 'Period: Q4')" in r.notes
    assert (
        "Left out 1 total row at the end (row 6: 'Total'), so sums over the table do not count them twice;"
        " the kept original file still has them"
    ) in r.notes


def test_a_total_row_inside_the_data_is_kept_and_said(tmp_path):
    data = b"customer,amount\nAcme,10\nSubtotal,10\nBeta,5\nTotal Energies SE,7\n"
    r = ingest_csv(tmp_path, "sub.csv", data)
    assert r.row_count == 4  # "Total Energies SE" is a customer, not a total
    assert "Row 3 looks like a total ('Subtotal'); kept as data, so exclude it in SQL to avoid counting it twice" in r.notes


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("wide", [False, True], ids=["one pass", "wide"])
def test_column_overrides_round_trip(tmp_path, wide):
    pad = "," + ",".join(f"x{i}" for i in range(30)) if wide else ""
    cells = "," + ",".join("1" for _ in range(30)) if wide else ""
    data = (
        f"code,amount,booked,ref{pad}\n"
        f"00123,\"1.234,50\",03/04/2024,7{cells}\n"
        f"00456,\"2.000,00\",05/06/2024,n/a{cells}\n"
        f"00789,\"12,25\",07/08/2024,oops{cells}\n"
    ).encode()
    path = write_csv(tmp_path, "ov.csv", data)
    db = tmp_path / "ws.duckdb"
    [auto] = ingest_file(db, path, original_name="ov.csv", table_names={None: "t"})
    assert {c.name: c.type for c in auto.columns if not c.name.startswith("x")} == {
        "code": "VARCHAR", "amount": "DECIMAL(18,2)", "booked": "DATE", "ref": "VARCHAR"
    }
    overrides = {
        "code": {"type": "integer"},
        "amount": {"type": "text"},
        "booked": {"type": "date", "date_order": "MDY"},
        "ref": {"type": "integer"},
    }
    [r] = ingest_file(db, path, original_name="ov.csv", table_names={None: "t"}, overrides={None: overrides})
    assert {c.name: c.type for c in r.columns if not c.name.startswith("x")} == {
        "code": "BIGINT", "amount": "VARCHAR", "booked": "DATE", "ref": "BIGINT", "ref_raw": "VARCHAR"
    }
    assert query(db, "SELECT code, amount, booked, ref, ref_raw FROM t") == [
        (123, "1.234,50", D(2024, 3, 4), 7, "7"),
        (456, "2.000,00", D(2024, 5, 6), None, None),  # n/a is empty, not a failure
        (789, "12,25", D(2024, 7, 8), None, "oops"),
    ]
    assert "Column 'booked' read as dates (month first), as set on the Data page" in r.notes
    assert "Column 'code' read as whole numbers, as set on the Data page" in r.notes
    assert "1 value of 'ref' did not fit whole numbers and is empty there; the text of every value is kept beside it in ref_raw" in r.notes


def test_override_validation():
    assert ingest.check_override({"type": "decimal", "decimal": "eu", "date_order": "DMY"}) == {
        "type": "decimal", "date_order": None, "decimal": "eu"
    }
    with pytest.raises(ValueError, match="type must be one of"):
        ingest.check_override({"type": "money"})
    with pytest.raises(ValueError, match="date_order"):
        ingest.check_override({"type": "date", "date_order": "YMD"})


def test_progress_reports_rows_read_from_the_worker(tmp_path):
    path = tmp_path / "big.csv"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT DATE '2024-01-01' + (i % 365)::INT AS day, i % 97 AS qty, 'x' || i AS ref FROM range(3000000) t(i))"
        f" TO '{path}' (HEADER)"
    )
    con.close()
    events: list[tuple[float, str]] = []
    [r] = ingest_file(tmp_path / "ws.duckdb", path, original_name="big.csv", table_names={None: "big"}, progress=lambda f, t: events.append((f, t)))
    assert r.row_count == 3_000_000
    reading = [(f, t) for f, t in events if t.startswith("Reading big: ")]
    assert reading, events  # the worker's reports came up the pipe while it read the rows
    assert all(0 <= f <= 1 for f, _ in events)
    assert re.fullmatch(r"Reading big: [\d,]+ of (about )?3,000,000 rows", reading[-1][1])
