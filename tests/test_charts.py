"""The chart engine (deliverables/charts.py): each mark drawn from real query results over the
sample workspace (run through the agent's own sandbox, kept as Parquet), the formats read back from
the Vega-Lite JSON, refusals one by one with their reasons, folding into "Other" with the sum kept,
PNG / SVG exports that stay offline, and hostile text that stays text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from datetime import date

import altair as alt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from cfo_desk.analytics.sample_data import load_subscriptions, reference_mrr, write_sample_files
from cfo_desk.analytics.sandbox import run_query
from cfo_desk.analytics.store import writer
from cfo_desk.deliverables import charts
from cfo_desk.deliverables.charts import (
    MAX_CATEGORIES,
    MAX_CHART_ROWS,
    MAX_SERIES,
    OTHER_LABEL,
    ChartRefused,
    ChartSpec,
    build_chart,
    chart_data,
    chart_png,
    chart_spec_json,
    chart_svg,
    check_chart,
    load_chart_spec,
    render_chart,
)

MRR_BY_MONTH = """
WITH m AS (SELECT last_day(DATE '2023-01-01' + to_months(i)) AS me FROM range(24) t(i))
SELECT date_trunc('month', me)::DATE AS month, sum(s.mrr_usd) AS mrr_usd
FROM m JOIN subscriptions s ON s.start_date <= me AND (s.end_date IS NULL OR s.end_date >= me)
GROUP BY 1 ORDER BY 1"""

MRR_BRIDGE = """
WITH snap AS (
  SELECT customer_id,
    sum(CASE WHEN start_date <= DATE '2023-12-31' AND (end_date IS NULL OR end_date >= DATE '2023-12-31') THEN mrr_usd ELSE 0 END) AS m0,
    sum(CASE WHEN start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31') THEN mrr_usd ELSE 0 END) AS m1
  FROM subscriptions GROUP BY customer_id)
SELECT step, amount FROM (
  SELECT 1 AS o, 'MRR Dec 2023' AS step, sum(m0) AS amount FROM snap
  UNION ALL SELECT 2, 'New', sum(m1) FILTER (WHERE m0 = 0 AND m1 > 0) FROM snap
  UNION ALL SELECT 3, 'Expansion', sum(m1 - m0) FILTER (WHERE m0 > 0 AND m1 > m0) FROM snap
  UNION ALL SELECT 4, 'Contraction', sum(m1 - m0) FILTER (WHERE m1 > 0 AND m1 < m0) FROM snap
  UNION ALL SELECT 5, 'Churn', -sum(m0) FILTER (WHERE m0 > 0 AND m1 = 0) FROM snap
  UNION ALL SELECT 6, 'MRR Dec 2024', sum(m1) FROM snap) ORDER BY o"""

CHURN_RATE = """
WITH m AS (SELECT DATE '2024-01-01' + to_months(i) AS ms FROM range(12) t(i)),
opening AS (
  SELECT ms, count(DISTINCT customer_id) AS customers FROM m JOIN subscriptions s
    ON s.start_date < ms AND (s.end_date IS NULL OR s.end_date >= ms - INTERVAL 1 DAY) GROUP BY ms),
churned AS (
  SELECT date_trunc('month', end_date)::DATE AS ms, count(*) AS n FROM subscriptions s
  WHERE end_date IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM subscriptions x WHERE x.customer_id = s.customer_id AND x.start_date = s.end_date + 1)
  GROUP BY 1)
SELECT o.ms AS month, coalesce(c.n, 0) / o.customers AS churn_rate, 100 * coalesce(c.n, 0) / o.customers AS churn_pct
FROM opening o LEFT JOIN churned c USING (ms) ORDER BY 1"""

QUERIES = {
    "mrr": MRR_BY_MONTH,
    "bridge": MRR_BRIDGE,
    "churn": CHURN_RATE,
    "segment": """SELECT c.segment, sum(o.revenue_usd) AS revenue_usd FROM orders o JOIN customers c USING (customer_id)
                  WHERE year(o.order_month) = 2024 GROUP BY 1 ORDER BY 2 DESC""",
    "region_month": """SELECT o.order_month AS month, c.region, sum(o.revenue_usd) AS revenue_usd
                       FROM orders o JOIN customers c USING (customer_id) GROUP BY 1, 2 ORDER BY 1, 2""",
    "region_segment": """SELECT c.region, c.segment, sum(o.revenue_usd) AS revenue_usd
                         FROM orders o JOIN customers c USING (customer_id) GROUP BY 1, 2 ORDER BY 1, 2""",
    "product_month": "SELECT order_month AS month, product_line, sum(revenue_usd) AS revenue_usd FROM orders GROUP BY 1, 2 ORDER BY 1, 2",
    "companies": """SELECT c.company_name, c.industry, sum(o.revenue_usd) AS revenue_usd, sum(o.profit_usd) AS profit_usd
                    FROM orders o JOIN customers c USING (customer_id) WHERE c.customer_id < 'C0040' GROUP BY 1, 2 ORDER BY 3 DESC""",
    "customer_month": """SELECT o.order_month AS month, o.customer_id, sum(o.revenue_usd) AS revenue_usd FROM orders o
                         WHERE o.customer_id < 'C0021' AND o.order_month < DATE '2023-04-01' GROUP BY 1, 2 ORDER BY 1, 2""",
    "orders": "SELECT * FROM orders",
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample workspace's four tables in a DuckDB file (money as DECIMAL(18,2), as exports hold it)
    and every query result of QUERIES run through the sandbox and kept as Parquet."""
    root = tmp_path_factory.mktemp("charts")
    files = write_sample_files(root / "csv")
    db = root / "data.duckdb"
    with writer(db) as con:
        for path in files:
            con.execute(f"CREATE TABLE {path.stem} AS SELECT * FROM read_csv(?)", [str(path)])
        for table, column in (("subscriptions", "mrr_usd"), ("orders", "revenue_usd")):
            con.execute(f"ALTER TABLE {table} ALTER {column} TYPE DECIMAL(18,2)")
    runs = {name: run_query(db, sql, parquet_path=root / f"{name}.parquet") for name, sql in QUERIES.items()}
    subs = load_subscriptions(files[1])
    return {"runs": runs, "subs": subs, "root": root}


def draw(run, **fields):
    """check_chart → chart_data → build_chart, as the make_chart tool does; returns (spec, data, vega-lite dict)."""
    spec = check_chart(ChartSpec(result="q1", **fields), run.columns, run.row_count)
    data = chart_data(spec, run.parquet_path)
    return spec, data, build_chart(spec, data).to_dict()


def refused(run, **fields) -> str:
    with pytest.raises(ChartRefused) as exc:
        spec = check_chart(ChartSpec(result="q1", **fields), run.columns, run.row_count)
        chart_data(spec, run.parquet_path)
    return exc.value.reason


def enc(vl: dict) -> dict:
    return vl["layer"][0]["encoding"] if "layer" in vl else vl["encoding"]


def tooltip(vl: dict, field: str) -> dict:
    return next(t for t in enc(vl)["tooltip"] if t["field"] == field)


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(e.itertext()) for e in root.iter() if e.tag.endswith("}text")]


# --- each mark on real data -------------------------------------------------------------------


def test_mrr_line_reads_months_in_utc_and_money_axis(sample):
    spec, data, vl = draw(sample["runs"]["mrr"], mark="line", x="month", y="mrr_usd", title="MRR by month", y_format="currency")
    assert spec.currency == "USD"  # from the column name mrr_usd
    assert data.x_axis == "month" and len(data.rows) == 24
    assert data.rows[0]["x"] == date(2023, 1, 1) and isinstance(data.rows[0]["y"], float)  # Decimal → float, dates stay dates
    assert data.rows[-1]["y"] == reference_mrr(sample["subs"], 2024, 12)
    x, y = enc(vl)["x"], enc(vl)["y"]
    assert (x["type"], x["timeUnit"], x["axis"]["format"]) == ("temporal", "utcyearmonth", "%b %Y")
    assert y["axis"]["format"] == "$,.0f" and y["title"] == "mrr_usd"
    assert tooltip(vl, "y")["format"] == "$,.2f" and tooltip(vl, "x")["format"] == "%b %Y"
    assert vl["width"] == "container" and vl["height"] == charts.CHART_HEIGHT
    assert vl["title"]["text"] == "MRR by month"


def test_revenue_by_segment_bar_keeps_row_order_and_sum(sample):
    run = sample["runs"]["segment"]
    spec, data, vl = draw(run, mark="bar", x="segment", y="revenue_usd", title="Revenue 2024 by segment", y_format="currency")
    kept = pq.read_table(run.parquet_path).to_pylist()
    assert enc(vl)["x"]["sort"] == [r["segment"] for r in kept] == data.x_order  # 'none': ORDER BY of the SQL
    assert enc(vl)["x"]["type"] == "nominal" and enc(vl)["y"]["axis"]["format"] == "$,.0f"
    assert sum(r["y"] for r in data.rows) == pytest.approx(float(sum(r["revenue_usd"] for r in kept)))
    _, by_name, vl2 = draw(run, mark="bar", x="segment", y="revenue_usd", title="t", y_format="currency", sort="x")
    assert enc(vl2)["x"]["sort"] == ["Enterprise", "Mid-Market", "SMB"]
    _, rising, _ = draw(run, mark="bar", x="segment", y="revenue_usd", title="t", sort="y")
    assert rising.x_order == list(reversed(data.x_order))


def test_stacked_bar_by_region_and_month(sample):
    run = sample["runs"]["region_month"]
    _, data, vl = draw(run, mark="stacked_bar", x="month", y="revenue_usd", series="region", title="Revenue by region", y_format="currency")
    e = enc(vl)
    assert (e["x"]["type"], e["x"]["timeUnit"], e["x"]["axis"]["format"]) == ("ordinal", "utcyearmonth", "%b %Y")
    assert e["color"]["field"] == "series" and set(data.series_order) == {"North America", "EMEA", "APAC", "LATAM"}
    assert "xOffset" not in e and e["y"].get("stack", "zero") is not None  # stacked, not grouped
    total = sum(float(r["revenue_usd"]) for r in pq.read_table(run.parquet_path).to_pylist())
    assert sum(r["y"] for r in data.rows) == pytest.approx(total)


def test_bar_with_series_is_grouped(sample):
    _, data, vl = draw(sample["runs"]["region_segment"], mark="bar", x="region", y="revenue_usd", series="segment", title="t", sort="-y")
    e = enc(vl)
    assert e["xOffset"]["field"] == "series" and e["y"]["stack"] is None
    totals = {}
    for r in data.rows:
        totals[r["x"]] = totals.get(r["x"], 0) + r["y"]
    assert data.x_order == sorted(totals, key=totals.get, reverse=True)  # -y: by the bar's total


def test_mrr_bridge_waterfall(sample):
    run = sample["runs"]["bridge"]
    _, data, vl = draw(run, mark="waterfall", x="step", y="amount", title="MRR bridge 2024", y_format="currency", currency="USD")
    start, end = reference_mrr(sample["subs"], 2023, 12), reference_mrr(sample["subs"], 2024, 12)
    rows = data.rows
    assert [r["kind"] for r in rows] == ["Total", "Increase", "Increase", "Decrease", "Decrease", "Total"]
    assert (rows[0]["start"], rows[0]["end"]) == (0.0, start) and (rows[-1]["start"], rows[-1]["end"]) == (0.0, end)
    for before, step in zip(rows[:-2], rows[1:-1]):  # each change starts where the running total stood
        assert step["start"] == pytest.approx(before["end"]) and step["end"] == pytest.approx(step["start"] + step["y"])
    assert rows[-2]["end"] == pytest.approx(end) and data.notes == []  # the bridge ties out
    assert rows[3]["label"].startswith("−$") and rows[1]["label"].startswith("+$") and rows[0]["label"] == f"${start:,.0f}"
    bars, labels = vl["layer"]
    assert bars["encoding"]["y"]["field"] == "start" and bars["encoding"]["y2"]["field"] == "end"
    assert bars["encoding"]["x"]["sort"] == [r["step"] for r in pq.read_table(run.parquet_path).to_pylist()]
    assert bars["encoding"]["y"]["axis"]["format"] == "$,.0f" and labels["encoding"]["text"]["field"] == "label"


def test_waterfall_totals_list_subtotal_and_a_bridge_that_does_not_tie(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"step": ["Open", "Sales", "Refunds", "Subtotal", "Fees", "Close"], "eur": [100.0, 50.0, -20.0, 130.0, -5.0, 120.0]}), path)
    cols = [{"name": "step", "type": "VARCHAR"}, {"name": "eur", "type": "DOUBLE"}]
    spec = check_chart(ChartSpec(result="q2", mark="waterfall", x="step", y="eur", title="Cash", y_format="currency",
                                 totals=["Open", "Subtotal", "Close"]), cols, 6)
    data = chart_data(spec, path)
    assert [r["kind"] for r in data.rows] == ["Total", "Increase", "Decrease", "Total", "Decrease", "Total"]
    assert data.rows[4]["start"] == 130.0  # the running total restarts at a subtotal
    assert len(data.notes) == 1 and "'Close'" in data.notes[0] and "does not tie out" in data.notes[0]  # 125 vs 120
    assert spec.currency == "EUR"
    y = enc(build_chart(spec, data).to_dict())["y"]
    assert y["axis"]["format"] == ",.0f" and y["title"] == "eur (EUR)"  # no $ for other currencies: the code is in the title


def test_churn_rate_percent_line_fractions_and_points(sample):
    run = sample["runs"]["churn"]
    _, frac, vl = draw(run, mark="line", x="month", y="churn_rate", title="Monthly logo churn 2024", y_format="percent")
    assert frac.percent_base == "fraction" and all(0 <= r["y"] < 0.1 for r in frac.rows)
    assert enc(vl)["y"]["axis"]["format"] == ".1~%" and tooltip(vl, "y")["format"] == ".2%"
    assert frac.x_axis == "month"  # TIMESTAMP month starts read as months
    _, pts, _ = draw(run, mark="line", x="month", y="churn_pct", title="t", y_format="percent")
    assert pts.percent_base == "points" and any("percentage points" in n for n in pts.notes)
    assert [r["y"] for r in pts.rows] == pytest.approx([r["y"] for r in frac.rows])
    _, forced, _ = draw(run, mark="line", x="month", y="churn_rate", title="t", y_format="percent", percent_base="points")
    assert forced.rows[0]["y"] == pytest.approx(frac.rows[0]["y"] / 100)


def test_stacked_area_fills_missing_points_with_zero(sample):
    _, data, vl = draw(sample["runs"]["product_month"], mark="area", x="month", y="revenue_usd", series="product_line", title="t", y_format="currency")
    months = {r["x"] for r in data.rows}
    assert len(data.rows) == len(months) * len(data.series_order)  # every series at every month
    assert any("drawn as 0" in n for n in data.notes) and vl["mark"]["type"] == "area"


def test_month_end_dates_read_as_months_and_other_dates_as_days(tmp_path):
    path = tmp_path / "me.parquet"
    pq.write_table(pa.table({"d": [date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)], "v": [1.0, 2.0, 3.0]}), path)
    spec = ChartSpec(result="q3", mark="line", x="d", y="v", title="t")
    data = chart_data(spec, path)
    assert data.x_axis == "month" and [r["x"] for r in data.rows] == [date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1)]
    pq.write_table(pa.table({"d": [date(2024, 1, 5), date(2024, 1, 31)], "v": [1.0, 2.0]}), path)
    days = chart_data(spec, path)
    assert days.x_axis == "date" and enc(build_chart(spec, days).to_dict())["x"]["timeUnit"] == "utcyearmonthdate"


def test_scatter_on_numbers(sample):
    _, data, vl = draw(sample["runs"]["companies"], mark="scatter", x="revenue_usd", y="profit_usd", title="t", y_format="currency")
    assert data.x_axis == "number" and enc(vl)["x"]["type"] == "quantitative" and vl["mark"]["type"] == "circle"


# --- refusals, one by one -----------------------------------------------------------------------


def test_unknown_field_names_the_columns(sample):
    reason = refused(sample["runs"]["segment"], mark="bar", x="segment", y="revenue", title="t")
    assert "no column 'revenue'" in reason and "segment (VARCHAR)" in reason and "revenue_usd (DECIMAL(38,2))" in reason
    assert "Did you mean 'revenue_usd'" in reason
    spec = check_chart(ChartSpec(result="q1", mark="bar", x="SEGMENT", y="Revenue_USD", title="t"), sample["runs"]["segment"].columns, 3)
    assert (spec.x, spec.y) == ("segment", "revenue_usd")  # case is forgiven when it names one column


def test_y_must_be_numeric_and_says_its_type(sample):
    reason = refused(sample["runs"]["region_segment"], mark="bar", x="revenue_usd", y="segment", title="t")
    assert "y must be a numeric column" in reason and "'segment' is VARCHAR" in reason


def test_month_format_on_text_is_refused(sample):
    reason = refused(sample["runs"]["segment"], mark="bar", x="segment", y="revenue_usd", title="t", x_format="month")
    assert "needs a DATE or TIMESTAMP column" in reason and "'segment' is VARCHAR" in reason


def test_too_many_line_series_are_refused(sample):
    reason = refused(sample["runs"]["customer_month"], mark="line", x="month", y="revenue_usd", series="customer_id", title="t")
    assert f"at most {MAX_SERIES} series" in reason and "20 distinct values" in reason


def test_series_on_scatter_and_waterfall_are_refused(sample):
    run = sample["runs"]["companies"]
    assert "scatter takes no series" in refused(run, mark="scatter", x="revenue_usd", y="profit_usd", series="industry", title="t")
    assert "waterfall takes no series" in refused(run, mark="waterfall", x="company_name", y="revenue_usd", series="industry", title="t")
    assert "numeric or date x" in refused(run, mark="scatter", x="company_name", y="revenue_usd", title="t")


def test_a_line_with_two_rows_per_month_asks_for_the_series(sample):
    reason = refused(sample["runs"]["region_month"], mark="line", x="month", y="revenue_usd", title="t")
    assert "more than one row at x 'Jan 2023'" in reason and "add the series field" in reason


def test_sort_by_value_on_a_time_axis_is_refused(sample):
    reason = refused(sample["runs"]["mrr"], mark="line", x="month", y="mrr_usd", title="t", sort="-y")
    assert "always in order" in reason
    assert "bridge order" in refused(sample["runs"]["bridge"], mark="waterfall", x="step", y="amount", title="t", sort="-y")


def test_a_large_result_is_refused_before_it_is_read(sample):
    run = sample["runs"]["orders"]
    assert run.row_count > MAX_CHART_ROWS
    reason = refused(run, mark="scatter", x="revenue_usd", y="cost_usd", title="t")
    assert f"at most {MAX_CHART_ROWS:,}" in reason and "Aggregate in SQL" in reason


def test_waterfall_totals_must_be_labels_and_steps_distinct(sample, tmp_path):
    run = sample["runs"]["bridge"]
    reason = refused(run, mark="waterfall", x="step", y="amount", title="t", totals=["Start", "MRR Dec 2024"])
    assert "'Start'" in reason and "'MRR Dec 2023'" in reason and "'Churn'" in reason
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"step": ["a", "b", "a"], "v": [1.0, 2.0, 3.0]}), path)
    spec = ChartSpec(result="q9", mark="waterfall", x="step", y="v", title="t")
    with pytest.raises(ChartRefused, match="'a' appears more than once"):
        chart_data(spec, path)
    assert "totals is for waterfall" in refused(run, mark="bar", x="step", y="amount", title="t", totals=["New"])


def test_percent_bars_beyond_the_category_limit_are_refused(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"plan": [f"plan {i:02d}" for i in range(25)], "margin": [0.1 + i / 100 for i in range(25)]}), path)
    spec = ChartSpec(result="q4", mark="bar", x="plan", y="margin", title="Margin by plan", y_format="percent")
    with pytest.raises(ChartRefused, match="percentages cannot be summed"):
        chart_data(spec, path)


def test_the_spec_schema_is_strict():
    with pytest.raises(ValidationError):
        ChartSpec(result="q1", mark="pie", x="a", y="b", title="t")
    with pytest.raises(ValidationError):
        ChartSpec(result="q1", mark="bar", x="a", y="b", title="t", colour="red")  # unknown fields are refused
    with pytest.raises(ValidationError):
        ChartSpec(result="q1", mark="bar", x="a", y="b", title="x" * (charts.MAX_TITLE_CHARS + 1))
    with pytest.raises(ValidationError):
        ChartSpec(result="q1", mark="bar", x="a", y="b", title="t", currency="dollars")
    assert ChartSpec(result="q1", mark="bar", x="a", y="b", title=" two\nlines ", currency="eur").title == "two lines"
    schema = ChartSpec.model_json_schema()
    assert all(p.get("description") for p in schema["properties"].values())
    assert len(json.dumps(schema)) < 6_000  # what the model reads on every turn


# --- folding into "Other" -------------------------------------------------------------------------


def test_more_than_20_categories_fold_into_other_with_the_sum_kept(sample):
    run = sample["runs"]["companies"]
    assert run.row_count > MAX_CATEGORIES
    _, data, vl = draw(run, mark="bar", x="company_name", y="revenue_usd", title="Revenue by customer", y_format="currency", sort="-y")
    kept = pq.read_table(run.parquet_path).to_pylist()
    assert len(data.rows) == MAX_CATEGORIES and data.x_order[-1] == OTHER_LABEL  # 19 largest + Other, Other last
    assert data.x_order[:-1] == [r["company_name"] for r in kept[: MAX_CATEGORIES - 1]]
    assert sum(r["y"] for r in data.rows) == pytest.approx(float(sum(r["revenue_usd"] for r in kept)))
    other = next(r for r in data.rows if r["x"] == OTHER_LABEL)
    assert other["y"] == pytest.approx(float(sum(r["revenue_usd"] for r in kept[MAX_CATEGORIES - 1:])))
    assert any("summed into 'Other'" in n for n in data.notes) and enc(vl)["x"]["sort"] == data.x_order


def test_more_than_12_bar_series_fold_into_other(sample):
    run = sample["runs"]["customer_month"]
    _, data, _ = draw(run, mark="stacked_bar", x="month", y="revenue_usd", series="customer_id", title="t")
    assert len(data.series_order) == MAX_SERIES and data.series_order[-1] == OTHER_LABEL
    total = sum(float(r["revenue_usd"]) for r in pq.read_table(run.parquet_path).to_pylist())
    assert sum(r["y"] for r in data.rows) == pytest.approx(total)


def test_chart_data_reads_at_most_the_row_limit(tmp_path):
    path = tmp_path / "big.parquet"
    n = MAX_CHART_ROWS + 7
    pq.write_table(pa.table({"a": [float(i) for i in range(n)], "b": [float(i % 13) for i in range(n)]}), path)
    spec = ChartSpec(result="q5", mark="scatter", x="a", y="b", title="t")
    with pytest.raises(ChartRefused):
        check_chart(spec, [{"name": "a", "type": "DOUBLE"}, {"name": "b", "type": "DOUBLE"}], n)
    data = chart_data(spec, path)  # called alone (a re-render of an older artifact): cut, and said so
    assert data.rows_read == len(data.rows) == MAX_CHART_ROWS and data.row_count == n
    assert f"Only the first {MAX_CHART_ROWS:,} of {n:,} rows are drawn." in data.notes


# --- artifacts: spec JSON, re-rendering without SQL --------------------------------------------


def test_the_kept_spec_re_renders_from_the_parquet_file_without_sql(sample, monkeypatch):
    run = sample["runs"]["region_month"]
    spec, _, vl = draw(run, mark="stacked_bar", x="Month", y="revenue_usd", series="region", title="Revenue", y_format="currency")
    kept = chart_spec_json(spec)
    assert load_chart_spec(kept) == spec and json.loads(kept)["x"] == "month"  # the checked, normalised spec

    def no_sql(*a, **k):
        raise AssertionError("re-rendering ran SQL")

    monkeypatch.setattr("cfo_desk.analytics.sandbox.run_query", no_sql)
    monkeypatch.setattr("duckdb.connect", no_sql)
    chart, data = render_chart(kept, run.parquet_path)
    assert chart.to_dict() == vl


# --- exports --------------------------------------------------------------------------------------


def _walk_keys(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            out.add(k)
            _walk_keys(v, out)
    elif isinstance(node, list):
        for v in node:
            _walk_keys(v, out)
    return out


def test_png_and_svg_exports(sample):
    spec, data, _ = draw(sample["runs"]["mrr"], mark="bar", x="month", y="mrr_usd", title="MRR by month (USD)", y_format="currency")
    chart = build_chart(spec, data)
    png = chart_png(chart)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    svg = chart_svg(chart)
    root = ET.fromstring(svg)
    assert float(root.get("width")) >= charts.EXPORT_WIDTH  # "container" has no width offline: a fixed one
    texts = svg_texts(svg)
    assert "MRR by month (USD)" in texts and "Jan 2023" in texts and "$300,000" in texts
    bare = svg.replace('xmlns="http://www.w3.org/2000/svg"', "").replace('xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    assert "<image" not in svg and "href" not in svg and "http" not in bare


def test_hostile_text_stays_text_in_the_svg(tmp_path):
    hostile = ["<script>alert(1)</script>", "![x](http://e/x.png)", '=HYPERLINK("http://e/?q=leak","x")', '<a href="http://e">y</a>']
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table({"label": hostile, "amount": [1.0, 2.0, 3.0, 4.0]}), path)
    title = '<img src="http://e/t.png"> ![t](http://e/t.png)'
    spec = check_chart(ChartSpec(result="q7", mark="bar", x="label", y="amount", title=title), [{"name": "label", "type": "VARCHAR"}, {"name": "amount", "type": "DOUBLE"}], 4)
    chart = build_chart(spec, chart_data(spec, path))
    assert "url" not in _walk_keys(chart.to_dict(), set()) and "href" not in _walk_keys(chart.to_dict(), set())
    svg = chart_svg(chart)
    root = ET.fromstring(svg)
    texts = svg_texts(svg)
    assert all(h in texts for h in hostile) and title in texts  # drawn literally, as text
    tags = {e.tag.split("}")[-1] for e in root.iter()}
    assert not tags & {"a", "image", "script", "foreignObject", "use", "iframe", "style"}
    attrs = {name.split("}")[-1] for e in root.iter() for name in e.attrib}
    assert not attrs & {"href", "src", "onload", "onclick"}
    assert "<script" not in svg and "<a " not in svg and "<img" not in svg
    assert chart_png(chart)[:4] == b"\x89PNG"


def test_only_inline_data_reaches_vega(sample, monkeypatch):
    run = sample["runs"]["segment"]
    with alt.data_transformers.enable("json"):  # a global transformer that would write a file and link it by URL
        _, _, vl = draw(run, mark="bar", x="segment", y="revenue_usd", title="t")
    assert "url" not in _walk_keys(vl, set()) and "usermeta" not in vl and vl["datasets"]
    point = {"mark": "point", "encoding": {"x": {"field": "a", "type": "quantitative"}}}
    hostile_specs = [
        {**point, "data": {"url": "http://127.0.0.1:9/d.csv"}},
        {**point, "data": {"values": [{"a": 1, "h": "http://e"}]}, "encoding": {**point["encoding"], "href": {"field": "h"}}},
        {"mark": "image", "data": {"values": [{"u": "http://127.0.0.1:9/i.png"}]}, "encoding": {"url": {"field": "u", "type": "nominal"}}},
        {"mark": {"type": "image"}, "data": {"values": [{"a": 1}]}},
        {**point, "data": {"values": [{"a": 1}]}, "usermeta": {"embedOptions": {}}},
    ]
    for spec in hostile_specs:
        with pytest.raises(ValueError, match="inline data|image"):
            chart_png(spec)
        with pytest.raises(ValueError, match="inline data|image"):
            chart_svg(spec)
    # vl-convert itself is told to load nothing: its own refusal, with the spec check out of the way
    monkeypatch.setattr(charts, "assert_offline", lambda spec: None)
    with pytest.raises(ValueError, match="not allowed"):
        chart_svg(hostile_specs[0])


_EXPORT_SCRIPT = textwrap.dedent("""
    import re, sys
    from datetime import date
    from cfo_desk.deliverables.charts import ChartData, ChartSpec, build_chart, chart_png, chart_svg
    for mark in ("line", "bar"):
        spec = ChartSpec(result="q1", mark=mark, x="m", y="v", title="t", y_format="currency", currency="USD")
        data = ChartData([{"x": date(2024, m, 1), "y": float(m)} for m in (1, 2, 3)], "month", None, None, "USD", None, 3, 3)
        chart = build_chart(spec, data)
        chart_png(chart)
        print(mark, re.findall(r">([A-Z][a-z]{2} [0-9]{4})<", chart_svg(chart)))
""")


def _export_in_subprocess(env_tz: str, strace: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _EXPORT_SCRIPT]
    if strace:
        cmd = [strace, "-f", "-e", "trace=socket,connect", "-o", "/dev/stderr", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": env_tz}, check=True)


def test_months_do_not_shift_in_a_time_zone_behind_utc():
    out = _export_in_subprocess("America/Los_Angeles").stdout  # local time units would draw Dec 2023
    assert "line ['Jan 2024', 'Feb 2024', 'Mar 2024']" in out and "bar ['Jan 2024', 'Feb 2024', 'Mar 2024']" in out


@pytest.mark.skipif(not shutil.which("strace"), reason="strace not installed")
def test_exports_open_no_network_socket():
    proc = _export_in_subprocess("UTC", strace=shutil.which("strace"))
    assert "line ['Jan 2024'" in proc.stdout
    calls = [line for line in proc.stderr.splitlines() if "socket(" in line or "connect(" in line]
    assert not [c for c in calls if "AF_INET" in c], calls
