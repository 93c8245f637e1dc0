"""The workbook engine (issue 9): spec checks and refusals, typed data that never becomes a formula,
the Sources sheet, atomic writes, the `formulas` preview, and a 2024 MRR bridge built from real
DuckDB results over the sample workspace, recalculated by LibreOffice headless, that ties out to the
SQL figures month by month."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import openpyxl
import pyarrow.parquet as pq
import pytest
from openpyxl.worksheet._writer import ALL_TEMP_FILES
from pydantic import ValidationError

from cfo_desk.analytics.sample_data import generate, reference_mrr, write_sample_files
from cfo_desk.deliverables import workbook as wbmod
from cfo_desk.deliverables.formula_check import ALLOWED_FUNCTIONS, REFUSED_FUNCTIONS, FormulaRefused, check_formula
from cfo_desk.deliverables.workbook import (
    MAX_DATA_CELLS,
    MAX_DATA_ROWS,
    CellSpec,
    ChartSeries,
    DataSheet,
    ModelSheet,
    NamedInput,
    NativeChart,
    ResultInfo,
    WorkbookError,
    WorkbookRefused,
    WorkbookSpec,
    check_workbook,
    preview_workbook,
    write_workbook,
)

BRIDGE_SQL = """
WITH month_ends AS (
  SELECT CAST(last_day(DATE '2023-12-01' + to_months(CAST(i AS INTEGER))) AS DATE) AS month_end
  FROM range(13) t(i)
), cm AS (
  SELECT e.month_end, s.customer_id, SUM(s.mrr_usd) AS mrr
  FROM month_ends e JOIN subscriptions s
    ON s.start_date <= e.month_end AND (s.end_date IS NULL OR s.end_date >= e.month_end)
  GROUP BY e.month_end, s.customer_id
), pairs AS (
  SELECT e.month_end, c.customer_id, COALESCE(cur.mrr, 0) AS cur, COALESCE(prev.mrr, 0) AS prev
  FROM month_ends e
  CROSS JOIN (SELECT DISTINCT customer_id FROM subscriptions) c
  LEFT JOIN cm cur ON cur.month_end = e.month_end AND cur.customer_id = c.customer_id
  LEFT JOIN cm prev ON prev.month_end = CAST(last_day(e.month_end - INTERVAL 1 MONTH) AS DATE)
                   AND prev.customer_id = c.customer_id
  WHERE e.month_end >= DATE '2024-01-01'
)
SELECT month_end AS month,
  SUM(prev) AS starting_mrr,
  SUM(CASE WHEN prev = 0 AND cur > 0 THEN cur ELSE 0 END) AS new_mrr,
  SUM(CASE WHEN prev > 0 AND cur > prev THEN cur - prev ELSE 0 END) AS expansion_mrr,
  SUM(CASE WHEN prev > 0 AND cur > 0 AND cur < prev THEN prev - cur ELSE 0 END) AS contraction_mrr,
  SUM(CASE WHEN prev > 0 AND cur = 0 THEN prev ELSE 0 END) AS churned_mrr,
  SUM(cur) AS ending_mrr
FROM pairs GROUP BY month_end ORDER BY month_end
"""

# Text a spreadsheet would run as a formula, or read as an error, if stored naively.
HOSTILE = ['=HYPERLINK("http://x","y")', "+1+1", "@SUM(A1)", "-2+3", "=1+1", "#N/A", "\t=cmd|' /C calc'!A0", "=", "plain"]
HOSTILE_SQL = (
    "SELECT * FROM (VALUES "
    + ", ".join(f"({i}, '{h.replace(chr(39), chr(39) * 2)}', DATE '2024-01-{i + 1:02d}', CAST({i}.25 AS DECIMAL(10,2)))" for i, h in enumerate(HOSTILE))
    + ') t(n, "=SUM(A1)", d, amount)'
)
SOFFICE = shutil.which("soffice")


def _ran(con: duckdb.DuckDBPyConnection, sql: str, handle: str, purpose: str, out: Path, datasets: list[dict]) -> ResultInfo:
    """Run `sql` on DuckDB and keep its result as a Parquet file, as the agent's run_sql does."""
    path = out / f"{handle}.parquet"
    table = con.sql(sql).to_arrow_table()
    pq.write_table(table, path)
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    return ResultInfo(handle, purpose, sql, path, datasets, dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.timezone.utc), columns, table.num_rows)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    """The sample workspace's subscriptions in DuckDB, the 2024 MRR bridge (q1) and a result of
    hostile text values (q2), both kept as Parquet."""
    root = tmp_path_factory.mktemp("sample")
    subs = write_sample_files(root / "files")[1]
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE subscriptions AS SELECT * FROM read_csv(?, header = true, "
        "types = {'mrr_usd': 'DECIMAL(12,2)', 'start_date': 'DATE', 'end_date': 'DATE'})",
        [str(subs)],
    )
    sha = hashlib.sha256(subs.read_bytes()).hexdigest()
    datasets = [{"table": "subscriptions", "dataset_id": 1, "source": "subscriptions.csv", "sha256": sha}]
    q1 = _ran(con, BRIDGE_SQL, "q1", "2024 MRR bridge by month", root, datasets)
    q2 = _ran(con, HOSTILE_SQL, "q2", "=HYPERLINK(\"http://x\",\"purpose\")", root, [])
    rows = con.execute(BRIDGE_SQL).fetchall()
    con.close()
    return {"root": root, "results": {"q1": q1, "q2": q2}, "rows": rows, "sha": sha}


def bridge_spec() -> WorkbookSpec:
    """The MRR bridge: start = previous end (January: the SQL's starting MRR), end = start + new +
    expansion - contraction - churn, per month; totals, a named growth input, a projection, a
    lookup, a text label that looks like a formula, a chart, and the hostile result as data."""
    heads = ["Month", "Starting MRR", "New", "Expansion", "Contraction", "Churn", "Ending MRR", "Check vs SQL"]
    cells = [CellSpec(ref=f"{c}1", value=v, kind="header") for c, v in zip("ABCDEFGH", heads)]
    for i in range(12):
        r = i + 2
        cells.append(CellSpec(ref=f"A{r}", formula=f"='MRR data'!A{r}", number_format="month"))
        cells.append(CellSpec(ref=f"B{r}", formula="='MRR data'!B2" if i == 0 else f"=G{r - 1}", number_format="currency"))
        cells += [CellSpec(ref=f"{c}{r}", formula=f"='MRR data'!{c}{r}", number_format="currency") for c in "CDEF"]
        cells.append(CellSpec(ref=f"G{r}", formula=f"=B{r}+C{r}+D{r}-E{r}-F{r}", number_format="currency"))
        cells.append(CellSpec(ref=f"H{r}", formula=f"=ROUND(G{r}-'MRR data'!G{r},2)", number_format="number"))
    cells.append(CellSpec(ref="A14", value="Total 2024", kind="total"))
    cells += [CellSpec(ref=f"{c}14", formula=f"=SUM({c}2:{c}13)", kind="total", number_format="currency") for c in "CDEF"]
    cells += [
        CellSpec(ref="A16", value="Monthly growth assumption"),
        CellSpec(ref="B16", value=0.02, number_format="percent"),
        CellSpec(ref="A17", value="Projected MRR, next month"),
        CellSpec(ref="B17", formula="=g13*(1+growth)", number_format="currency"),
        CellSpec(ref="A18", value="Projection month"),
        CellSpec(ref="B18", formula="=EOMONTH(A13,1)", number_format="month"),
        CellSpec(ref="A19", value="Month with the most churn"),
        CellSpec(ref="B19", formula="=INDEX(A2:A13,MATCH(MAX(F2:F13),F2:F13,0))", number_format="month"),
        CellSpec(ref="A20", value='=HYPERLINK("http://x","y")'),
        CellSpec(ref="B20", value="2025-01-31", number_format="date"),
    ]
    return WorkbookSpec(
        title="MRR bridge 2024",
        model_sheets=[ModelSheet(name="MRR bridge", cells=cells, freeze="B2", column_widths={"A": 30})],
        data_sheets=[
            DataSheet(name="MRR data", result="q1", number_formats={"ending_mrr": "currency"}),
            DataSheet(name="Raw text", result="q2"),
        ],
        named_inputs=[NamedInput(name="Growth", sheet="MRR bridge", ref="B16")],
        charts=[NativeChart(sheet="MRR bridge", kind="line", title="Ending MRR", categories="'MRR bridge'!A2:A13",
                            series=[ChartSeries(title="Ending MRR", values="'MRR bridge'!G2:G13")], anchor="J2")],
    )


@pytest.fixture(scope="module")
def bridge(sample, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bridge")
    summary = write_workbook(bridge_spec(), sample["results"], out / "MRR bridge 2024.xlsx")
    return {"summary": summary, "path": summary.path, "out": out}


@pytest.fixture(scope="module")
def recalculated(bridge) -> Path:
    """The bridge workbook recalculated by LibreOffice headless (formulas kept, values cached)."""
    if SOFFICE is None:
        if os.environ.get("CI"):
            pytest.fail("soffice (LibreOffice) is missing; CI installs libreoffice-calc-nogui (.ci/run)")
        pytest.skip("soffice (LibreOffice) is not installed: apt-get install -y libreoffice-calc-nogui")
    out = bridge["out"] / "recalculated"
    home = bridge["out"] / "lo-home"
    home.mkdir()
    proc = subprocess.run(
        [SOFFICE, "--headless", "--calc", "--convert-to", "xlsx", "--outdir", str(out), str(bridge["path"])],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=120,
    )
    result = out / bridge["path"].name
    assert proc.returncode == 0 and result.exists(), proc.stdout + proc.stderr
    return result


# --- The MRR bridge, recalculated ---------------------------------------------------------------


def test_libreoffice_recalculation_ties_out_to_duckdb(sample, recalculated):
    wb = openpyxl.load_workbook(recalculated, data_only=True)
    ws = wb["MRR bridge"]
    sql = sample["rows"]  # (month, start, new, expansion, contraction, churn, end) per month
    assert len(sql) == 12
    december = reference_mrr(generate().subscriptions, 2024, 12)
    assert december == 312109.50
    assert float(sql[-1][6]) == december
    assert ws["G13"].value == pytest.approx(december, abs=0.005)
    for i, (month, start, new, exp, con, churn, end) in enumerate(sql):
        r = i + 2
        b, c, d, e, f, g = (ws.cell(r, col).value for col in range(2, 8))
        assert ws.cell(r, 1).value.date() == month
        assert b + c + d - e - f == pytest.approx(g, abs=0.005), f"month {month} does not tie out"
        assert g == pytest.approx(float(end), abs=0.005), f"month {month}: chained ending MRR differs from SQL"
        assert b == pytest.approx(float(start), abs=0.005)
        if i:
            assert b == ws.cell(r - 1, 7).value  # start = previous end
        assert ws.cell(r, 8).value == 0
    for col, k in zip("CDEF", range(2, 6)):
        assert ws[f"{col}14"].value == pytest.approx(sum(float(row[k]) for row in sql), abs=0.005)
    assert ws["B17"].value == pytest.approx(december * 1.02, abs=0.005)  # the named input Growth
    assert ws["B18"].value == dt.datetime(2025, 1, 31)
    worst = max(sql, key=lambda row: row[5])[0]
    assert ws["B19"].value.date() == worst
    # Data and text survive the recalculation as text.
    raw = wb["Raw text"]
    assert [raw.cell(r, 2).value for r in range(2, 2 + len(HOSTILE))] == HOSTILE
    formulas_wb = openpyxl.load_workbook(recalculated)
    assert _formula_cells(formulas_wb["Raw text"]) == 0
    assert _formula_cells(formulas_wb["MRR data"]) == 0
    assert formulas_wb["MRR bridge"]["A20"].data_type == "s"


def test_preview_computes_with_formulas_engine(sample, bridge):
    preview = preview_workbook(bridge["path"])
    assert preview.computed and preview.engine_note is None
    sheets = {s.name: s for s in preview.sheets}
    assert list(sheets) == ["MRR bridge", "MRR data", "Raw text", "Sources"]
    model = sheets["MRR bridge"]
    assert model.formulas["G13"] == "=B13+C13+D13-E13-F13"
    assert model.formulas["B17"] == "=G13*(1+Growth)"  # normalised case
    assert model.rows[12][6] == pytest.approx(312109.50, abs=0.005)
    for i, row in enumerate(sample["rows"]):
        assert model.rows[i + 1][6] == pytest.approx(float(row[6]), abs=0.005)
    assert model.rows[1][0] == dt.datetime(2024, 1, 31)  # a formula with a month format reads as a date
    assert model.rows[16][1] == pytest.approx(312109.50 * 1.02, abs=0.005)
    assert model.rows[19][0] == '=HYPERLINK("http://x","y")' and "A20" not in model.formulas
    frame = model.frame()
    assert frame.loc[13, "G"] == pytest.approx(312109.50, abs=0.005)
    data = sheets["MRR data"]
    assert data.rows[0][:2] == ["month", "starting_mrr"] and not data.formulas and not data.more_rows
    raw = sheets["Raw text"]
    assert [row[1] for row in raw.rows[1:]] == HOSTILE and not raw.formulas  # text, never run by the engine


def test_preview_is_bounded_and_never_raises(bridge, monkeypatch):
    small = preview_workbook(bridge["path"], max_rows=3, max_cols=2, engine_max_cells=10)
    model = small.sheets[0]
    assert len(model.rows) == 3 and all(len(r) <= 2 for r in model.rows)
    assert model.more_rows and model.more_cols
    assert not small.computed and "10 filled cells" in small.engine_note
    assert model.rows[1] == [None, None]  # formula cells, not computed
    assert model.formulas == {"A2": "='MRR data'!A2", "B2": "='MRR data'!B2", "A3": "='MRR data'!A3", "B3": "=G2"}

    import formulas

    def broken(self, *args, **kwargs):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(formulas.ExcelModel, "loads", broken)
    failed = preview_workbook(bridge["path"])
    assert not failed.computed and "engine exploded" in failed.engine_note
    assert failed.sheets[0].formulas["G13"] == "=B13+C13+D13-E13-F13"


# --- What was written ---------------------------------------------------------------------------


def _formula_cells(ws) -> int:
    return sum(1 for row in ws.iter_rows() for c in row if c.data_type == "f")


def test_data_values_are_typed_and_never_formulas(bridge):
    wb = openpyxl.load_workbook(bridge["path"])
    raw = wb["Raw text"]
    assert raw["B1"].value == "=SUM(A1)" and raw["B1"].data_type == "s"  # a header is text too
    assert [raw.cell(r, 2).value for r in range(2, 2 + len(HOSTILE))] == HOSTILE
    assert all(raw.cell(r, 2).data_type == "s" for r in range(2, 2 + len(HOSTILE)))
    for name in ("Raw text", "MRR data", "Sources"):
        assert _formula_cells(wb[name]) == 0, name
    assert wb["Sources"]["B3"].value == '=HYPERLINK("http://x","purpose")'  # a purpose is text
    model = wb["MRR bridge"]
    assert _formula_cells(model) == bridge["summary"].formula_cells == 12 * 8 + 4 + 3
    assert model["A20"].data_type == "s" and model["A20"].value == '=HYPERLINK("http://x","y")'
    assert model["B20"].is_date and model["B20"].value == dt.datetime(2025, 1, 31)
    # Numbers as numbers (DECIMAL too), dates as dates, with formats.
    data = wb["MRR data"]
    assert data["A2"].is_date and data["A2"].value == dt.datetime(2024, 1, 31)
    assert data["A2"].number_format == "yyyy-mm-dd"
    assert isinstance(data["G13"].value, float) and data["G13"].value == 312109.5
    assert data["G2"].number_format.startswith('"$"#,##0.00')  # number_formats: currency
    assert data["B2"].number_format == "#,##0.00"  # DECIMAL(38,2) default
    assert raw["A3"].value == 1 and raw["D3"].value == 1.25 and raw["C3"].is_date


def test_layout_styles_names_and_chart(bridge):
    summary = bridge["summary"]
    assert summary.sheets == ["MRR bridge", "MRR data", "Raw text", "Sources"]
    assert summary.data_rows == {"MRR data": 12, "Raw text": len(HOSTILE)}
    assert summary.named_inputs == ["Growth"] and summary.charts == 1 and summary.results == ["q1", "q2"]
    wb = openpyxl.load_workbook(bridge["path"])
    model, data = wb["MRR bridge"], wb["MRR data"]
    assert model["B16"].font.color.rgb.endswith("0000FF") and model["B16"].fill.fgColor.rgb.endswith("FFF2CC")
    assert model["B16"].number_format == "0.0%"
    assert model["G5"].font.color.rgb.endswith("000000") and model["G5"].fill.fill_type is None
    assert model["A1"].font.b and model["C14"].font.b and model["C14"].border.top.style == "thin"
    assert model["A2"].number_format == "mmm yyyy"
    assert model.freeze_panes == "B2" and model.column_dimensions["A"].width == 30
    assert data.freeze_panes == "A2" and data["A1"].font.b and data.auto_filter.ref == "A1:G13"
    assert data.column_dimensions["B"].width >= len("starting_mrr")
    assert wb.defined_names["Growth"].attr_text == "'MRR bridge'!$B$16"
    assert len(model._charts) == 1
    assert wb.properties.title == "MRR bridge 2024"
    # Each sheet declares its size, so read-only readers (the preview) need not parse a whole sheet.
    quick = openpyxl.load_workbook(bridge["path"], read_only=True)
    assert [ws.calculate_dimension() for ws in quick.worksheets] == ["A1:H20", "A1:G13", "A1:D10", "A1:I3"]


def test_sources_sheet(sample, bridge):
    ws = openpyxl.load_workbook(bridge["path"])["Sources"]
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == wbmod.SOURCES_COLUMNS
    q1 = dict(zip(rows[0], rows[1]))
    assert q1["Handle"] == "q1" and q1["Purpose"] == "2024 MRR bridge by month"
    assert q1["Used on sheet"] == "MRR data" and q1["Rows"] == 12
    assert q1["Ran at (UTC)"] == dt.datetime(2026, 11, 20, 9, 30)
    assert q1["Tables read"] == "subscriptions" and q1["Source files"] == "subscriptions.csv"
    assert q1["SHA-256"] == sample["sha"] and len(sample["sha"]) == 64
    assert q1["SQL"] == BRIDGE_SQL
    assert rows[2][0] == "q2" and len(rows) == 3


def test_text_that_excel_cannot_hold(sample, tmp_path):
    con = duckdb.connect()
    sql = ("SELECT 'a' || chr(1) || 'b' AS t, repeat('x', 40000) AS long, CAST('nan' AS DOUBLE) AS f, "
           "9007199254740993::BIGINT AS big, DATE '1899-12-31' AS old, [1, 2] AS l")
    info = _ran(con, sql, "q9", "edge values", tmp_path, [])
    summary = write_workbook(WorkbookSpec(title="t", data_sheets=[DataSheet(name="Edge", result="q9")]), {"q9": info}, tmp_path / "e.xlsx")
    ws = openpyxl.load_workbook(summary.path)["Edge"]
    assert ws["A2"].value == "ab" and len(ws["B2"].value) == 32_767 and ws["C2"].value is None
    assert ws["D2"].value == "9007199254740993" and ws["E2"].value == "1899-12-31" and ws["F2"].value == "[1, 2]"
    assert len(summary.notes) == 6 and any("control characters" in n for n in summary.notes)


# --- Refusals -----------------------------------------------------------------------------------

REFUSED_FORMULAS = [
    ('=HYPERLINK("http://x","y")', "HYPERLINK is refused"),
    ('=WEBSERVICE("http://x")', "WEBSERVICE is refused"),
    ('=INDIRECT("A1")', "INDIRECT is refused"),
    ("=OFFSET(A1,1,1)", "OFFSET is refused"),
    ("=TODAY()", "TODAY is refused: it is volatile"),
    ("=[1]Sheet1!A1", "[1]Sheet1!A1 refers to another workbook (external link)"),
    ("='C:\\x\\[a.xlsx]Sheet'!A1", "refers to a file path or URL (external link)"),
    ("='https://evil.example/[x.xlsx]S'!A1", "refers to a file path or URL"),
    ("=cmd|' /C calc'!A0", "DDE link"),
    ("=SUM(cmd|x!A0)", "DDE link"),
    ("=_xll.Foo(1)", "add-in function"),
    ("=FOO(1)", "unknown function FOO"),
    ("=STDEV(A1:A3)", "STDEV is not on the allow-list"),
    ("='Elsewhere'!A1", "the sheet 'Elsewhere', which is not in this workbook"),
    ("=Nope*2", "Nope is neither a cell reference nor a named input"),
    ("=Sheet1:Sheet3!A1", "3-D reference"),
    ("=SUM('MRR data'!B:B)", "whole-column reference"),
    ("=SUM(A1", "not valid Excel syntax"),
    ("=1++", "not valid Excel syntax"),
    ("=@SUM(A1)", "implicit-intersection"),
    ("=A1048577", "outside a worksheet"),
    ("=Table1[Col]", "table reference"),
    ('="' + "x" * 300 + '"', "longer than 255"),
]


def _one_cell_spec(formula: str) -> WorkbookSpec:
    return WorkbookSpec(
        title="t",
        model_sheets=[ModelSheet(name="Model", cells=[CellSpec(ref="A1", value=1), CellSpec(ref="B2", formula=formula)])],
        data_sheets=[DataSheet(name="MRR data", result="q1")],
    )


@pytest.mark.parametrize(("formula", "expected"), REFUSED_FORMULAS, ids=[f for f, _ in REFUSED_FORMULAS])
def test_formula_refusals(sample, formula, expected):
    with pytest.raises(WorkbookRefused) as err:
        check_workbook(_one_cell_spec(formula), sample["results"])
    reason = err.value.reason
    assert reason.startswith("Sheet 'Model', cell B2: "), reason
    assert expected in reason, reason


def test_allowed_formulas_pass(sample):
    for formula in ["=SUM('MRR data'!B2:B13)/COUNT('MRR data'!B2:B13)", "=IFERROR(A1/0,0)", "=XLOOKUP(1,A1:A3,A1:A3)",
                    "=SUMIFS('mrr data'!G2:G13,'MRR data'!A2:A13,\">=\"&DATE(2024,7,1))", "=-2+3", "=A1%", "=EDATE(A1,1)"]:
        check_workbook(_one_cell_spec(formula), sample["results"])
    assert not set(REFUSED_FUNCTIONS) & ALLOWED_FUNCTIONS
    with pytest.raises(FormulaRefused, match="the limit is 2,000"):  # also without the spec's own limit
        check_formula("=" + "+".join(["1"] * 1001), sheets=["Model"])


def _spec(**overrides) -> WorkbookSpec:
    base = {"title": "t", "data_sheets": [DataSheet(name="MRR data", result="q1")]}
    return WorkbookSpec(**{**base, **overrides})


def test_spec_refusals(sample):
    results = sample["results"]
    model = ModelSheet(name="M", cells=[CellSpec(ref="A1", value=1), CellSpec(ref="A2", value="label"), CellSpec(ref="B1", formula="=A1*2")])
    cases = [
        (_spec(data_sheets=[DataSheet(name="D", result="q7")]), "Sheet 'D': there is no result 'q7' in this conversation (results: q1, q2)"),
        (_spec(data_sheets=[DataSheet(name="D", result="q1"), DataSheet(name="d", result="q2")]), "two sheets are named 'd'"),
        (_spec(data_sheets=[DataSheet(name="Sources", result="q1")]), "reserved"),
        (_spec(data_sheets=[DataSheet(name="a/b", result="q1")]), "contains /"),
        (_spec(data_sheets=[DataSheet(name="Bob's plan", result="q1")]), "may not contain an apostrophe"),
        (_spec(data_sheets=[DataSheet(name=" x", result="q1")]), "may not start or end with a space"),
        (_spec(data_sheets=[DataSheet(name="D", result="q1", number_formats={"nope": "currency"})]), "'nope', which is not a column of q1"),
        (_spec(cited_results=["q5"]), "cited_results names 'q5'"),
        (_spec(model_sheets=[model], named_inputs=[NamedInput(name="Rate", sheet="M", ref="B1")]), "named input Rate: Sheet 'M', cell B1 must be a cell of kind input"),
        (_spec(model_sheets=[model], named_inputs=[NamedInput(name="TAX2024", sheet="M", ref="A1")]), "looks like a cell reference"),
        (_spec(model_sheets=[model], named_inputs=[NamedInput(name="R2C3", sheet="M", ref="A1")]), "R1C1"),
        (_spec(model_sheets=[model], named_inputs=[NamedInput(name="x", sheet="M", ref="A1"), NamedInput(name="X", sheet="M", ref="A1")]), "defined twice"),
        (_spec(model_sheets=[model], named_inputs=[NamedInput(name="x", sheet="MRR data", ref="A1")]), "not a model sheet"),
        (_spec(model_sheets=[ModelSheet(name="M", cells=[CellSpec(ref="A1", value=1), CellSpec(ref="A1", value=2)])]), "Sheet 'M', cell A1: the cell is defined twice"),
        (_spec(model_sheets=[ModelSheet(name="M", cells=[CellSpec(ref="A1", formula="=B1+1"), CellSpec(ref="B1", formula="=C1"), CellSpec(ref="C1", formula="=SUM(A1:A3)")])]),
         "circular reference: 'M'!A1 -> 'M'!B1 -> 'M'!C1 -> 'M'!A1"),
        (_spec(model_sheets=[ModelSheet(name="M", cells=[CellSpec(ref="B14", formula="=SUM(B2:B14)", kind="total")])]), "circular reference: 'M'!B14 -> 'M'!B14"),
        (_spec(model_sheets=[ModelSheet(name="M", cells=[CellSpec(ref="A1", value=1)], column_widths={"A1": 10})]), "not a column letter"),
        (_spec(charts=[NativeChart(sheet="Nowhere", kind="line", title="c", categories="'MRR data'!A2:A13", series=[ChartSeries(title="s", values="'MRR data'!B2:B13")])]), "no sheet 'Nowhere'"),
        (_spec(charts=[NativeChart(sheet="MRR data", kind="bar", title="c", categories="'MRR data'!A2:A13", series=[ChartSeries(title="s", values="'MRR data'!B2:B12")])]), "has 11 values but the categories have 12"),
        (_spec(charts=[NativeChart(sheet="MRR data", kind="bar", title="c", categories="A2:A13", series=[ChartSeries(title="s", values="'MRR data'!B2:B13")])]), "must be one range with its sheet"),
        (_spec(charts=[NativeChart(sheet="MRR data", kind="bar", title="c", categories="'MRR data'!A2:B13", series=[ChartSeries(title="s", values="'MRR data'!B2:B13")])]), "single column or a single row"),
        (_spec(charts=[NativeChart(sheet="MRR data", kind="bar", title="c", categories="'MRR data'!A2:A13", series=[ChartSeries(title="s", values="SUM('MRR data'!B2:B13)")])]), "must be one range"),
    ]
    for spec, expected in cases:
        with pytest.raises(WorkbookRefused) as err:
            check_workbook(spec, results)
        assert expected in err.value.reason, (expected, err.value.reason)


def test_size_limits(sample, tmp_path):
    q1 = sample["results"]["q1"]
    too_long = ResultInfo(**{**q1.__dict__, "handle": "big", "row_count": MAX_DATA_ROWS + 1})
    with pytest.raises(WorkbookRefused, match=r"has 1,048,576 rows; an Excel sheet holds at most 1,048,575"):
        check_workbook(_spec(data_sheets=[DataSheet(name="D", result="big")]), {"big": too_long})
    wide = ResultInfo(**{**q1.__dict__, "handle": "wide", "row_count": MAX_DATA_CELLS // 7 + 1})
    with pytest.raises(WorkbookRefused, match="at most 1,000,000"):
        check_workbook(_spec(data_sheets=[DataSheet(name="D", result="wide")]), {"wide": wide})
    with pytest.raises(ValidationError, match="at most 20 items"):
        WorkbookSpec(title="t", data_sheets=[DataSheet(name=f"D{i}", result="q1") for i in range(21)])
    # The Parquet file, not the claimed row count, decides when writing.
    lying = ResultInfo(**{**q1.__dict__, "handle": "q1", "row_count": 1})
    assert write_workbook(_spec(), {"q1": lying}, tmp_path / "x.xlsx").data_rows == {"MRR data": 12}


def test_cell_spec_validation():
    for kwargs, expected in [
        ({"ref": "B3$"}, "one cell in A1 style"),
        ({"ref": "A1:B2", "value": 1}, "one cell"),
        ({"ref": "'S'!A1", "value": 1}, "one cell"),
        ({"ref": "A1", "value": 1, "formula": "=1"}, "either value or formula"),
        ({"ref": "A1"}, "set a value or a formula"),
        ({"ref": "A1", "formula": "SUM(A2)"}, "must start with '='"),
        ({"ref": "A1", "value": "x", "kind": "formula"}, "needs a formula"),
        ({"ref": "A1", "formula": "=1", "kind": "input"}, "kind formula or total"),
        ({"ref": "A1", "value": True}, "true/false"),
        ({"ref": "A1", "value": float("nan")}, "finite"),
        ({"ref": "A1", "value": "x" * 1001}, "the limit is 1,000"),
        ({"ref": "ZZ1", "value": 1}, "outside a model sheet's area"),
        ({"ref": "A1", "value": 1, "colour": "red"}, "Extra inputs"),
        ({"ref": "A1", "formula": "=" + "+".join(["1"] * 1001)}, "at most 2000 characters"),
    ]:
        with pytest.raises(ValidationError, match=expected):
            CellSpec(**kwargs)
    assert CellSpec(ref="b3", value=2).kind == "input" and CellSpec(ref="b3", value=2).ref == "B3"
    assert CellSpec(ref="A1", value="x").kind == "label" and CellSpec(ref="A1", formula="=1").kind == "formula"
    schema = WorkbookSpec.model_json_schema()
    assert "A1 style" in str(schema) and "never as a formula" in str(schema)


def test_result_info_from_artifact(sample):
    q1 = sample["results"]["q1"]
    artifact = type("Artifact", (), {"handle": "q1", "title": q1.purpose, "sql": q1.sql, "datasets_read": q1.datasets_read,
                                     "created_at": q1.ran_at, "columns": q1.columns, "row_count": 12})()
    assert ResultInfo.from_artifact(artifact, q1.parquet_path) == q1


# --- Atomic writes ------------------------------------------------------------------------------


def test_failed_write_leaves_no_file(sample, tmp_path, monkeypatch):
    q1 = sample["results"]["q1"]
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    bad = ResultInfo(**{**q1.__dict__, "parquet_path": corrupt})
    target = tmp_path / "out" / "w.xlsx"
    target.parent.mkdir()
    with pytest.raises(WorkbookError, match="the file of result q1 could not be read"):
        write_workbook(_spec(), {"q1": bad}, target)
    assert not target.exists()

    # A failure while the file is being saved: no half-written file, no temporary left behind,
    # and a workbook already at the path is untouched.
    target.write_bytes(b"the previous workbook")

    def half_save(self, filename):
        Path(filename).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    streamed = list(ALL_TEMP_FILES)  # the files openpyxl streams write-only sheets to
    monkeypatch.setattr(openpyxl.Workbook, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        write_workbook(_spec(), {"q1": q1}, target)
    assert target.read_bytes() == b"the previous workbook"
    assert sorted(p.name for p in target.parent.iterdir()) == ["w.xlsx"]
    assert ALL_TEMP_FILES == streamed  # the failed workbook's sheet streams were removed
