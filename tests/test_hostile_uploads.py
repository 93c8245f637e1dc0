"""Hostile uploads: files that are tiny on disk but huge to parse. Each is refused by a cheap limit
before any parsing, or parsed in the ingest worker process whose crash or memory error is a
readable upload error. Throughout, this (the app's) process stays alive and small, nothing of a
refused upload remains, and the next upload works."""

from __future__ import annotations

import os
import re
import zipfile
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from cfo_desk.analytics import ingest, ingest_worker
from cfo_desk.analytics.ingest import IngestError
from cfo_desk.config import get_settings
from cfo_desk.services import datasets as ds_svc
from cfo_desk.services import workspaces as ws_svc
from cfo_desk.storage.files import duckdb_path, workspace_dir

GOOD = b"month,revenue\n2024-01-01,100.50\n2024-02-01,200.25\n"
RSS_LIMIT = 1 << 30  # this process's peak RSS must stay under 1 GB


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def ws(session):
    return ws_svc.create_workspace(session=session, name="Hostile")


def tables(ws) -> list[str]:
    db = duckdb_path(ws.key)
    if not db.exists():
        return []
    with duckdb.connect(str(db), read_only=True) as con:
        return sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())


def assert_nothing_left_and_next_upload_works(session, ws) -> None:
    assert ds_svc.list_datasets(session=session, workspace_id=ws.id) == []
    assert tables(ws) == []
    folder = workspace_dir(ws.key)
    uploads = folder / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    assert [p.name for p in folder.iterdir() if p.name.startswith(".cfo_ingest_")] == []  # no staged database
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="good.csv", data=GOOD)
    assert (d.table_name, d.row_count) == ("good", 2)
    assert tables(ws) == ["good"]
    assert vm_hwm() < RSS_LIMIT, f"peak RSS of the test process {vm_hwm() / 2**20:.0f} MB"


def refused(session, ws, filename: str, data: bytes, pattern: str) -> str:
    with pytest.raises(IngestError) as info:
        ds_svc.upload_file(session=session, workspace_id=ws.id, filename=filename, data=data)
    message = str(info.value)
    assert message.startswith(f"{filename}: "), message
    assert re.search(pattern, message), message
    assert_nothing_left_and_next_upload_works(session, ws)
    return message


def wide_csv(columns: int, rows: int = 3) -> bytes:
    lines = [",".join(f"metric_{j}" for j in range(columns))]
    lines += [",".join(str(r * 1000 + j) for j in range(columns)) for r in range(rows)]
    return ("\n".join(lines) + "\n").encode()


# ------------------------------------------------------------------------------------- wide CSVs


def test_300_columns_load_within_limits(session, ws):
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="wide300.csv", data=wide_csv(300))
    assert (d.row_count, len(d.columns)) == (3, 300)
    assert {c["type"] for c in d.columns} == {"BIGINT"}
    assert vm_hwm() < RSS_LIMIT


def test_1000_columns_are_the_limit_and_load(session, ws):
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="wide1000.csv", data=wide_csv(ingest.MAX_COLUMNS))
    assert (d.row_count, len(d.columns)) == (3, 1000)
    assert vm_hwm() < RSS_LIMIT


def test_5000_columns_are_refused_before_parsing(session, ws):
    data = wide_csv(5000)
    assert len(data) < 150_000
    refused(session, ws, "wide5000.csv", data, r"has 5,000 columns; the limit is 1,000 columns per table")


def test_1001_columns_are_refused(session, ws):
    refused(session, ws, "wide1001.csv", wide_csv(1001), r"has 1,001 columns; the limit is 1,000")


def test_semicolon_csv_columns_are_counted(session, ws):
    data = ("\n".join(";".join(f"{r}{j}" for j in range(1200)) for r in range(3)) + "\n").encode()
    refused(session, ws, "semi.csv", data, r"has 1,200 columns")


def test_cells_limit(session, ws, monkeypatch):
    monkeypatch.setenv("CFO_DESK_INGEST_MAX_CELLS", "1000")
    get_settings.cache_clear()
    data = ("a,b,c,d\n" + "1,2,3,4\n" * 300).encode()
    refused(session, ws, "tall.csv", data, r"about 301 rows x 4 columns = 1,204 cells; the limit is 1,000 cells per upload")


def test_50_mb_single_line_csv(session, ws):
    """One 50 MB line: as a header it is refused by the column count (in the first 1 MB alone)."""
    data = (b"column," * (8 * 2**20))[: 50 * 2**20]
    assert len(data) == 50 * 2**20 and b"\n" not in data
    refused(session, ws, "oneline.csv", data, r"has at least [\d,]+ columns; the limit is 1,000")


def test_50_mb_single_value_csv(session, ws):
    """One 50 MB line that is a single value passes the limits; the parse (in the worker) refuses it."""
    data = b"x" * (50 * 2**20)
    refused(session, ws, "onevalue.csv", data, r"^onevalue\.csv: line 1 is longer than 2,000,000 bytes, the longest line read")


# --------------------------------------------------------------------------------- xlsx by hand

CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
    "</Types>"
)
ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
    "</Relationships>"
)
WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    ' xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Data" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
    '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/>'
    "</Relationships>"
)
NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'


def sheet_xml(dimension: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet {NS}><dimension ref="{dimension}"/>'
        '<sheetData><row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c r="A2"><v>1</v></c><c r="B2"><v>2.5</v></c></row></sheetData></worksheet>'
    )


def workbook(path: Path, *, dimension: str = "A1:B2", sst_attrs: str = 'count="2" uniqueCount="2"', strings: int = 0) -> Path:
    """A minimal valid xlsx; `strings` tiny extra shared strings are streamed into the part."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES)
        zf.writestr("_rels/.rels", ROOT_RELS)
        zf.writestr("xl/workbook.xml", WORKBOOK)
        zf.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        zf.writestr("xl/worksheets/sheet1.xml", sheet_xml(dimension))
        with zf.open("xl/sharedStrings.xml", "w", force_zip64=True) as part:
            part.write(f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><sst {NS} {sst_attrs}>'.encode())
            part.write(b"<si><t>item</t></si><si><t>amount</t></si>")
            block = b"<si><t>a</t></si>" * 100_000
            for _ in range(strings // 100_000):
                part.write(block)
            part.write(b"</sst>")
    return path


def test_hand_made_workbook_loads(session, ws, tmp_path):
    """The builder makes a real workbook: without a bomb it loads."""
    path = workbook(tmp_path / "ok.xlsx")
    (d,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="ok.xlsx", data=path.read_bytes())
    assert (d.sheet_name, d.row_count, [c["name"] for c in d.columns]) == ("Data", 1, ["item", "amount"])


def test_shared_strings_bomb(session, ws, tmp_path):
    """20M tiny shared strings (340 MB of XML in about 1 MB): refused from the zip directory."""
    path = workbook(tmp_path / "sst.xlsx", sst_attrs="", strings=20_000_000)
    data = path.read_bytes()
    assert len(data) < 2 * 2**20
    refused(session, ws, "sst.xlsx", data, r"xl/sharedStrings\.xml is compressed [\d,]+ to 1 .*the limit is 100 to 1")


def test_shared_strings_declared_count(session, ws, tmp_path):
    path = workbook(tmp_path / "count.xlsx", sst_attrs='count="20000000" uniqueCount="20000000"')
    refused(session, ws, "count.xlsx", path.read_bytes(), r"declares 20,000,000 shared strings; the limit is 5,000,000")


def test_dimension_bomb(session, ws, tmp_path):
    """A 5 KB sheet that claims A1:XFD1048576 (16,384 columns x 1,048,576 rows)."""
    path = workbook(tmp_path / "dim.xlsx", dimension="A1:XFD1048576")
    assert path.stat().st_size < 5000
    refused(session, ws, "dim.xlsx", path.read_bytes(), r"worksheet 'Data' declares 16,384 columns \(A1:XFD1048576\); the limit is 1,000")


def test_dimension_cells(session, ws, tmp_path):
    path = workbook(tmp_path / "tall.xlsx", dimension="A1:CV1048576")
    refused(session, ws, "tall.xlsx", path.read_bytes(), r"declares 1,048,576 rows x 100 columns .*the limit is 30,000,000 cells")


def test_not_a_zip(session, ws):
    refused(session, ws, "fake.xlsx", b"hello, this is not a workbook", r"not a valid Excel workbook")


# ------------------------------------------------------------------------ the worker's own limits


def test_parse_crash_or_out_of_memory_kills_only_the_worker(session, ws, monkeypatch):
    """With the column limit lifted, 5,000 columns go to the worker: under a 1 GB cap it runs out
    of memory (before the chunked cleanup it segfaulted); this process survives."""
    monkeypatch.setenv("CFO_DESK_INGEST_MAX_COLUMNS", "10000")
    monkeypatch.setenv("CFO_DESK_INGEST_MEMORY_GB", "1")
    get_settings.cache_clear()
    refused(session, ws, "wide5000.csv", wide_csv(5000), r"the file needed more than 1 GB of memory to read")


def test_worker_killed_by_a_signal_is_a_readable_error():
    for func in ("os.abort", "faulthandler._sigsegv"):
        with pytest.raises(IngestError, match=r"^x\.csv: the file needed more than 2 GB of memory to read"):
            ingest_worker.call(func, {}, name="x.csv", memory_gb=2, timeout_s=30)
    assert os.getpid() > 0  # still here


def test_parse_timeout(session, ws, monkeypatch):
    monkeypatch.setenv("CFO_DESK_INGEST_TIMEOUT_S", "0.5")
    get_settings.cache_clear()
    with pytest.raises(IngestError, match=r"^w\.csv: reading the file took longer than 0\.5 seconds"):
        ds_svc.upload_file(session=session, workspace_id=ws.id, filename="w.csv", data=wide_csv(300))
    monkeypatch.delenv("CFO_DESK_INGEST_TIMEOUT_S")
    get_settings.cache_clear()
    assert_nothing_left_and_next_upload_works(session, ws)


def test_upload_stopped_mid_write_leaves_the_workspace_as_it_was(session, ws, tmp_path):
    """The worker writes straight into the workspace's file, in one transaction. When the upload
    is stopped while the table is being written (here: the page's progress callback raises, as
    when the analyst leaves the page), the worker is killed before the workspace's locks are let
    go: the table it was replacing keeps its old rows, the file opens, the next upload works."""
    (old,) = ds_svc.upload_file(session=session, workspace_id=ws.id, filename="sales.csv", data=GOOD)
    big = tmp_path / "sales.csv"
    with duckdb.connect() as con:  # 3M rows: progress is reported as the write starts (and on)
        con.execute(
            "COPY (SELECT DATE '2024-01-01' + CAST(i % 365 AS INTEGER) AS month, i / 100 AS revenue FROM range(3000000) t(i))"
            f" TO '{big}' (HEADER)"
        )

    class LeftThePage(Exception):
        pass

    heard: list[str] = []

    def progress(fraction: float, text: str) -> None:
        heard.append(text)
        if text.startswith("Reading sales"):
            raise LeftThePage

    with pytest.raises(LeftThePage):
        ds_svc.upload_file(
            session=session, workspace_id=ws.id, filename="sales.csv", data=big.read_bytes(), on_conflict="replace", progress=progress
        )
    assert heard[-1].startswith("Reading sales")
    with duckdb.connect(str(duckdb_path(ws.key)), read_only=True) as con:
        assert con.execute("SELECT CAST(month AS VARCHAR), revenue FROM sales ORDER BY 1").fetchall() == [
            ("2024-01-01", Decimal("100.50")),
            ("2024-02-01", Decimal("200.25")),
        ]
    (d,) = ds_svc.list_datasets(session=session, workspace_id=ws.id)
    assert (d.id, d.row_count, d.sha256) == (old.id, 2, old.sha256)
    (again,) = ds_svc.upload_file(
        session=session, workspace_id=ws.id, filename="sales.csv", data=GOOD + b"2024-03-01,300\n", on_conflict="replace"
    )
    assert again.row_count == 3
