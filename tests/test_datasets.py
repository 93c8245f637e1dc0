"""Dataset services on real SQLite, DuckDB and files: upload, workbooks, conflicts, failures, delete."""

from __future__ import annotations

from datetime import date

import duckdb
import pytest
from messy_files import write_xlsx

from cfo_desk.analytics.ingest import IngestError
from cfo_desk.services import datasets as ds_svc
from cfo_desk.services import workspaces as ws_svc
from cfo_desk.services.errors import InvalidInput
from cfo_desk.storage.files import duckdb_path, workspace_dir

CSV = b"invoice_date,customer,amount\n03/04/2024,Acme,\"$1,200.50\"\n05/06/2024,Beta,(300.25)\n"


def table_rows(ws, table):
    with duckdb.connect(str(duckdb_path(ws.key)), read_only=True) as con:
        return con.execute(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()


def uploads(ws):
    folder = workspace_dir(ws.key) / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def ws(session):
    return ws_svc.create_workspace(session=session, name="Close")


def test_csv_upload_records_provenance_and_types(session, ws):
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="Q1 Invoices.csv", data=CSV)
    assert (d.table_name, d.source_filename, d.row_count, d.size_bytes) == ("q1_invoices", "Q1 Invoices.csv", 2, len(CSV))
    import hashlib

    assert d.sha256 == hashlib.sha256(CSV).hexdigest()
    assert d.columns == [
        {"name": "invoice_date", "type": "DATE"}, {"name": "customer", "type": "VARCHAR"}, {"name": "amount", "type": "DECIMAL(18,2)"},
    ]
    assert (workspace_dir(ws.key) / d.file_path).read_bytes() == CSV  # the original is kept as uploaded
    # 03/04 and 05/06 fit both orders: the assumed order is recorded and can be switched.
    assert d.date_order == "MDY" and d.ambiguous_date_columns == ["invoice_date"]
    assert [r[0] for r in table_rows(ws, "q1_invoices")] == [date(2024, 3, 4), date(2024, 5, 6)]
    d = ds_svc.set_date_order(session=session, dataset_id=d.id, date_order="DMY")
    assert d.date_order == "DMY"
    assert [r[0] for r in table_rows(ws, "q1_invoices")] == [date(2024, 4, 3), date(2024, 6, 5)]
    assert [float(r[2]) for r in table_rows(ws, "q1_invoices")] == [1200.50, -300.25]
    profile = ds_svc.dataset_profile(session=session, dataset_id=d.id)
    assert profile.set_index("column").loc["amount", "min"] == "-300.25"
    assert len(ds_svc.dataset_preview(session=session, dataset_id=d.id)) == 2


def test_workbook_sheets_become_datasets(session, ws, tmp_path):
    path = write_xlsx(tmp_path / "Board Pack.xlsx", {"P&L": [["month", "revenue"], [date(2024, 1, 1), 100.5], [date(2024, 2, 1), 200.25]], "Headcount": [["team", "fte"], ["Sales", 4], ["R&D", 7]]})
    made = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="Board Pack.xlsx", data=path.read_bytes())
    assert sorted((d.sheet_name, d.table_name, d.row_count) for d in made) == [
        ("Headcount", "board_pack_headcount", 2), ("P&L", "board_pack_p_and_l", 2),
    ]
    assert table_rows(ws, "board_pack_headcount") == [("R&D", 7), ("Sales", 4)]


def test_same_name_asks_then_replace_or_keep_both(session, ws):
    ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a,b\n1,2\n")
    with pytest.raises(ds_svc.DuplicateUpload, match="Replace it, or keep both"):
        ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a,b\n3,4\n")
    (both,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a,b\n3,4\n", on_conflict="keep_both")
    assert both.table_name == "sales_2" and table_rows(ws, "sales") == [(1, 2)]
    first_files = uploads(ws)
    assert len(first_files) == 2
    replaced = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a,b\n5,6\n7,8\n", on_conflict="replace")
    # Replace targets the newest copy; the older one kept with "keep both" stays as it was.
    assert [(d.id, d.table_name, d.row_count) for d in replaced] == [(both.id, "sales_2", 2)]
    assert table_rows(ws, "sales") == [(1, 2)] and table_rows(ws, "sales_2") == [(5, 6), (7, 8)]
    assert len(ds_svc.list_datasets(session=session, workspace_id=ws.id)) == 2
    assert len(uploads(ws)) == 2 and uploads(ws) != first_files  # the replaced original is gone, the new one kept


def test_failed_upload_leaves_nothing_and_keeps_the_old_table(session, ws):
    ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a,b\n1,2\n")
    before_files = uploads(ws)
    with pytest.raises(IngestError, match=r"^sales\.csv: .*row"):
        ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a,b\n1,2\n3,4,5,6\n", on_conflict="replace")
    assert table_rows(ws, "sales") == [(1, 2)]
    assert uploads(ws) == before_files
    (d,) = ds_svc.list_datasets(session=session, workspace_id=ws.id)
    assert d.row_count == 1
    with pytest.raises(IngestError, match="broken.xlsx"):
        ds_svc.upload_file(session=session, workspace_id=ws.id, filename="broken.xlsx", data=b"not a zip")
    with pytest.raises(InvalidInput, match="empty.csv: the file is empty"):
        ds_svc.upload_file(session=session, workspace_id=ws.id, filename="empty.csv", data=b"")
    assert uploads(ws) == before_files and len(ds_svc.list_datasets(session=session, workspace_id=ws.id)) == 1


def test_delete_dataset_drops_table_and_file(session, ws):
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a,b\n1,2\n")
    ds_svc.delete_dataset(session=session, dataset_id=d.id)
    assert ds_svc.list_datasets(session=session, workspace_id=ws.id) == [] and uploads(ws) == []
    with duckdb.connect(str(duckdb_path(ws.key)), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)


def test_concurrent_uploads_never_share_a_table(session, ws):
    import threading

    from cfo_desk.storage.db import session_scope

    files = {"sales.csv": b"month,revenue\n2024-01-01,100\n", "Sales.CSV": b"customer,segment\nAcme,SMB\nBeta,Enterprise\n"}
    errors: list = []

    def upload(name):
        try:
            with session_scope() as s:
                ds_svc.upload_file(session=s, workspace_id=ws.id, filename=name, data=files[name])
        except Exception as exc:  # collected: the test asserts there are none
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n,)) for n in files]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    rows = {d.source_filename: d for d in ds_svc.list_datasets(session=session, workspace_id=ws.id)}
    assert {d.table_name for d in rows.values()} == {"sales", "sales_2"}
    assert len(table_rows(ws, rows["sales.csv"].table_name)) == 1 and len(table_rows(ws, rows["Sales.CSV"].table_name)) == 2


def test_profile_counts_nulls_and_distincts_exactly(session, ws):
    data = b"id,amount\n" + b"".join(f"{i},{'' if i == 7 else i % 50}\n".encode() for i in range(300_001))
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="big.csv", data=data)
    profile = ds_svc.dataset_profile(session=session, dataset_id=d.id).set_index("column")
    assert profile.loc["amount", "nulls"] == 1 and profile.loc["id", "nulls"] == 0
    assert profile.loc["amount", "distinct"] == 50 and profile.loc["id", "distinct"] == 300_001


def test_query_provenance_comes_from_the_table_itself(session, ws, tmp_path):
    """A query records the sha256 of the file whose rows it read, even if the dataset was replaced
    after the turn started (the hash is stamped on the DuckDB table at ingest)."""
    import hashlib

    from cfo_desk.analytics.sandbox import run_query

    ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=b"a\n1\n")
    new = b"a\n1\n2\n"
    ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=new, on_conflict="replace")
    r = run_query(duckdb_path(ws.key), "SELECT sum(a) AS s FROM sales", parquet_path=tmp_path / "q.parquet")
    assert r.rows == [[3]] and r.table_sha256 == {"sales": hashlib.sha256(new).hexdigest()}


def test_workbook_totals_and_unsaved_formulas_are_flagged(session, ws, tmp_path):
    path = write_xlsx(tmp_path / "rev.xlsx", {"Revenue 2024": [["month", "revenue"], [date(2024, 1, 1), 100], [date(2024, 2, 1), 200], ["Total", "=SUM(B2:B3)"]]})
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="rev.xlsx", data=path.read_bytes())
    notes = " ".join(d.notes)
    assert "1 formula cell(s)" in notes and "had no saved result" in notes
    assert "Left out 1 total row at the end (row 4: 'Total')" in notes


def test_column_types_are_kept_applied_to_replacements_and_shown_to_the_agent(session, ws):
    from cfo_desk.agent.core import tables_for_model
    from cfo_desk.services.turns import _dataset_refs

    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="inv.csv", data=CSV)
    assert {c["name"]: c["type"] for c in d.columns}["amount"] == "DECIMAL(18,2)"
    d = ds_svc.set_column_types(
        session=session, dataset_id=d.id, overrides={"amount": {"type": "text"}, "invoice_date": {"type": "date", "date_order": "DMY"}}
    )
    assert {c["name"]: c["type"] for c in d.columns} == {"invoice_date": "DATE", "customer": "VARCHAR", "amount": "VARCHAR"}
    assert table_rows(ws, d.table_name) == [(date(2024, 4, 3), "Acme", "$1,200.50"), (date(2024, 6, 5), "Beta", "(300.25)")]
    assert d.column_overrides["amount"] == {"type": "text", "date_order": None, "decimal": None}

    # Next month's export replaces the file: the chosen types apply to it too.
    (d2,) = ds_svc.upload_file(
        session=session, workspace_id=ws.id, filename="inv.csv", data=CSV + b"07/08/2024,Cobalt,$5.00\n", on_conflict="replace"
    )
    assert d2.id == d.id and d2.row_count == 3
    assert {c["name"]: c["type"] for c in d2.columns}["amount"] == "VARCHAR"
    assert "Column 'amount' read as text, as set on the Data page" in d2.notes

    # The agent's table list carries the notes.
    (entry,) = tables_for_model(_dataset_refs(session, ws.id))["tables"]
    assert "Column 'amount' read as text, as set on the Data page" in entry["ingest_notes"]

    # Back to automatic; unknown columns and bad specs are refused.
    d3 = ds_svc.set_column_types(session=session, dataset_id=d.id, overrides={"amount": None})
    assert {c["name"]: c["type"] for c in d3.columns}["amount"] == "DECIMAL(18,2)" and "amount" not in d3.column_overrides
    with pytest.raises(InvalidInput, match="no column named 'nope'"):
        ds_svc.set_column_types(session=session, dataset_id=d.id, overrides={"nope": {"type": "text"}})
    with pytest.raises(InvalidInput, match="type must be one of"):
        ds_svc.set_column_types(session=session, dataset_id=d.id, overrides={"amount": {"type": "money"}})
