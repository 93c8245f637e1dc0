"""The sample workspace: deterministic files, DuckDB-readable types, consistent keys, and
pure-Python reference figures that agree with SQL over the CSV files."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from cfo_desk.analytics import sample_data as sd


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = sd.write_sample_files(tmp_path_factory.mktemp("sample"))
    return {p.stem: p for p in paths}


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def data() -> sd.SampleData:
    return sd.generate()


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> tuple:
    return con.execute(sql, params).fetchone()


def test_write_returns_four_paths_in_order_and_is_byte_identical(tmp_path: Path) -> None:
    first = sd.write_sample_files(tmp_path / "a")
    second = sd.write_sample_files(tmp_path / "b")
    assert [p.name for p in first] == list(sd.FILE_NAMES) == [
        "customers.csv", "subscriptions.csv", "orders.csv", "marketing_spend.csv"]
    assert [p.parent for p in first] == [tmp_path / "a"] * 4
    for a, b in zip(first, second, strict=True):
        digest_a = hashlib.sha256(a.read_bytes()).hexdigest()
        assert digest_a == hashlib.sha256(b.read_bytes()).hexdigest(), a.name
    # A different seed must change the data (the seed really drives the content).
    other = sd.write_sample_files(tmp_path / "c", seed=sd.SEED + 1)
    assert other[1].read_bytes() != first[1].read_bytes()


def test_files_are_plain_utf8_csv_with_expected_headers(files: dict[str, Path]) -> None:
    expected = {
        "customers": sd.CUSTOMER_COLUMNS,
        "subscriptions": sd.SUBSCRIPTION_COLUMNS,
        "orders": sd.ORDER_COLUMNS,
        "marketing_spend": sd.MARKETING_SPEND_COLUMNS,
    }
    for stem, columns in expected.items():
        raw = files[stem].read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf"), stem
        assert b"\r" not in raw, stem
        text = raw.decode("utf-8")
        assert text.splitlines()[0] == ",".join(columns), stem


EXPECTED_TYPES = {
    "customers": {
        "customer_id": "VARCHAR", "company_name": "VARCHAR", "segment": "VARCHAR",
        "industry": "VARCHAR", "region": "VARCHAR", "acquisition_channel": "VARCHAR",
        "signup_date": "DATE",
    },
    "subscriptions": {
        "subscription_id": "VARCHAR", "customer_id": "VARCHAR", "plan": "VARCHAR",
        "billing_cycle": "VARCHAR", "start_date": "DATE", "end_date": "DATE",
        "mrr_usd": "DOUBLE", "list_price_usd": "DOUBLE",
    },
    "orders": {
        "order_id": "VARCHAR", "customer_id": "VARCHAR", "order_month": "DATE",
        "revenue_usd": "DOUBLE", "cost_usd": "DOUBLE", "profit_usd": "DOUBLE",
        "product_line": "VARCHAR",
    },
    "marketing_spend": {"month": "DATE", "channel": "VARCHAR", "spend_usd": "DOUBLE"},
}


@pytest.mark.parametrize("stem", list(EXPECTED_TYPES))
def test_duckdb_read_csv_infers_expected_types(con, files, stem: str) -> None:
    described = con.execute("DESCRIBE SELECT * FROM read_csv(?)", [str(files[stem])]).fetchall()
    assert {row[0]: row[1] for row in described} == EXPECTED_TYPES[stem]
    assert [row[0] for row in described] == list(EXPECTED_TYPES[stem])


def test_row_counts_and_categories(con, files, data) -> None:
    counts = {stem: _one(con, "SELECT count(*) FROM read_csv(?)", [str(p)])[0]
              for stem, p in files.items()}
    assert counts == {
        "customers": len(data.customers), "subscriptions": len(data.subscriptions),
        "orders": len(data.orders), "marketing_spend": len(data.marketing_spend),
    }
    assert 400 <= counts["customers"] <= 800
    assert counts["subscriptions"] > counts["customers"]  # plan changes create successors
    assert counts["marketing_spend"] == 24 * len(sd.PAID_CHANNELS)
    cust = str(files["customers"])
    segments = con.execute("SELECT DISTINCT segment FROM read_csv(?)", [cust]).fetchall()
    assert {r[0] for r in segments} == set(sd.SEGMENTS)
    assert {r[0] for r in con.execute("SELECT DISTINCT acquisition_channel FROM read_csv(?)",
                                      [cust]).fetchall()} == set(sd.CHANNELS)
    assert _one(con, "SELECT count(DISTINCT customer_id) = count(*) FROM read_csv(?)", [cust])[0]
    assert _one(con, "SELECT count(DISTINCT company_name) = count(*) FROM read_csv(?)", [cust])[0]
    plans = {r[0] for r in con.execute("SELECT DISTINCT plan FROM read_csv(?)",
                                       [str(files["subscriptions"])]).fetchall()}
    assert plans == set(sd.PLANS)


def test_foreign_keys_are_consistent(con, files) -> None:
    cust = str(files["customers"])
    for child in ("subscriptions", "orders"):
        orphans, total = _one(
            con,
            "SELECT count(*) FILTER (WHERE c.customer_id IS NULL), count(*) "
            "FROM read_csv(?) x LEFT JOIN read_csv(?) c USING (customer_id)",
            [str(files[child]), cust],
        )
        assert total > 0 and orphans == 0, child
    # Every customer has at least one subscription.
    without = _one(
        con,
        "SELECT count(*) FROM read_csv(?) c WHERE NOT EXISTS "
        "(SELECT 1 FROM read_csv(?) s WHERE s.customer_id = c.customer_id)",
        [cust, str(files["subscriptions"])],
    )[0]
    assert without == 0


def test_orders_profit_is_revenue_minus_cost_and_months_in_period(con, files) -> None:
    bad, n, positive, lo, hi, not_first, lines = _one(
        con,
        "SELECT count(*) FILTER (WHERE round(revenue_usd - cost_usd, 2) <> profit_usd), "
        "count(*), bool_and(revenue_usd > 0 AND cost_usd >= 0), min(order_month), "
        "max(order_month), count(*) FILTER (WHERE day(order_month) <> 1), "
        "count(DISTINCT product_line) FROM read_csv(?)",
        [str(files["orders"])],
    )
    assert n > 0 and bad == 0
    assert positive
    assert (lo, hi) == (date(2023, 1, 1), date(2024, 12, 1))
    assert not_first == 0
    assert lines == len(sd.PRODUCT_LINES)


def test_subscription_dates_prices_and_no_overlaps(con, files) -> None:
    subs = str(files["subscriptions"])
    bad_order, latest, bad_monthly, bad_annual, enterprise_monthly = _one(
        con,
        "SELECT count(*) FILTER (WHERE end_date IS NOT NULL AND end_date <= start_date), "
        "greatest(max(start_date), max(end_date)), "
        "count(*) FILTER (WHERE billing_cycle = 'monthly' AND mrr_usd <> list_price_usd), "
        "count(*) FILTER (WHERE billing_cycle = 'annual' "
        "  AND mrr_usd <> round(list_price_usd / 12, 2)), "
        "count(*) FILTER (WHERE plan = 'Enterprise' AND billing_cycle <> 'annual') "
        "FROM read_csv(?)",
        [subs],
    )
    assert bad_order == 0
    assert latest <= sd.PERIOD_END
    assert bad_monthly == 0 and bad_annual == 0 and enterprise_monthly == 0
    overlaps = _one(
        con,
        "SELECT count(*) FROM read_csv(?) a JOIN read_csv(?) b "
        "ON a.customer_id = b.customer_id AND a.subscription_id < b.subscription_id "
        "AND a.start_date <= coalesce(b.end_date, DATE '9999-12-31') "
        "AND b.start_date <= coalesce(a.end_date, DATE '9999-12-31')",
        [subs, subs],
    )[0]
    assert overlaps == 0
    # Opening-book customers (signed up before the period) are all active on 2023-01-01.
    missing = _one(
        con,
        "SELECT count(*) FROM read_csv(?) c WHERE c.signup_date < DATE '2023-01-01' AND NOT EXISTS "
        "(SELECT 1 FROM read_csv(?) s WHERE s.customer_id = c.customer_id "
        "AND s.start_date <= DATE '2023-01-01' "
        "AND (s.end_date IS NULL OR s.end_date >= DATE '2023-01-01'))",
        [str(files["customers"]), subs],
    )[0]
    assert missing == 0


SQL_MRR = (
    "SELECT round(sum(mrr_usd), 2), count(DISTINCT customer_id) FROM read_csv(?) "
    "WHERE start_date <= ? AND (end_date IS NULL OR end_date >= ?)"
)


def test_reference_mrr_dec_2024_matches_sql_over_csv(con, files, data) -> None:
    rows = sd.load_subscriptions(files["subscriptions"])
    reference = sd.reference_mrr(rows, 2024, 12)
    day = date(2024, 12, 31)
    sql_mrr, sql_customers = _one(con, SQL_MRR, [str(files["subscriptions"]), day, day])
    assert reference == sql_mrr
    assert sd.reference_mrr(data.subscriptions, 2024, 12) == reference  # in-memory == file
    assert sd.reference_active_customers(rows, 2024, 12) == sql_customers
    # Plausible for a few hundred B2B customers: $100k-$1M MRR, ARPA $200-$3,000.
    assert 100_000 < reference < 1_000_000
    assert 200 < reference / sql_customers < 3_000


def test_reference_figures_match_sql_for_every_month(con, files, data) -> None:
    by_month = {
        (d.year, d.month): (mrr, n)
        for d, mrr, n in con.execute(
            "SELECT m.d, round(sum(s.mrr_usd), 2), count(DISTINCT s.customer_id) "
            "FROM (SELECT last_day(x)::DATE AS d FROM range(DATE '2023-01-01', DATE '2025-01-01', "
            "INTERVAL 1 MONTH) t(x)) m JOIN read_csv(?) s "
            "ON s.start_date <= m.d AND (s.end_date IS NULL OR s.end_date >= m.d) GROUP BY m.d",
            [str(files["subscriptions"])],
        ).fetchall()
    }
    assert len(by_month) == 24
    for (y, m), (mrr, n) in by_month.items():
        assert sd.reference_mrr(data.subscriptions, y, m) == mrr, (y, m)
        assert sd.reference_active_customers(data.subscriptions, y, m) == n, (y, m)


def test_mrr_grows_over_the_period(data) -> None:
    subs = data.subscriptions
    jan_2023 = sd.reference_mrr(subs, 2023, 1)
    dec_2023 = sd.reference_mrr(subs, 2023, 12)
    dec_2024 = sd.reference_mrr(subs, 2024, 12)
    assert 0 < jan_2023 < dec_2023 < dec_2024
    assert dec_2024 > 2 * jan_2023
    assert (sd.reference_active_customers(subs, 2023, 1)
            < sd.reference_active_customers(subs, 2024, 12))


def test_reference_functions_follow_the_inclusive_definition() -> None:
    def sub(cid: str, start: date, end: date | None, mrr: float) -> dict:
        return {"customer_id": cid, "start_date": start, "end_date": end, "mrr_usd": mrr}

    rows = [
        sub("A", date(2024, 1, 1), date(2024, 3, 31), 100.10),   # ends on month end: counts
        sub("A", date(2024, 4, 1), None, 250.20),                # successor (next day): not yet
        sub("B", date(2024, 3, 31), None, 0.1),                  # starts on month end: counts
        sub("C", date(2024, 2, 1), date(2024, 3, 30), 999.0),    # ended the day before: no
        sub("D", date(2024, 1, 15), None, 0.2),                  # active, no end: counts
    ]
    assert sd.reference_mrr(rows, 2024, 3) == 100.4  # exact to the cent (0.1 + 0.2 + 100.10)
    assert sd.reference_active_customers(rows, 2024, 3) == 3
    assert sd.reference_mrr(rows, 2024, 4) == 250.5
    assert sd.reference_active_customers(rows, 2024, 4) == 3
    assert sd.reference_mrr(rows, 2023, 12) == 0.0
    assert ">= month end" in sd.MRR_DEFINITION and "mrr_usd" in sd.MRR_DEFINITION


def test_lifecycle_has_expansion_contraction_and_churn_with_realistic_shapes(data) -> None:
    segment = {c["customer_id"]: c["segment"] for c in data.customers}
    by_customer: dict[str, list[dict]] = defaultdict(list)
    for s in data.subscriptions:
        by_customer[s["customer_id"]].append(s)
    moves = Counter()
    churned = Counter()
    for cid, subs in by_customer.items():
        subs.sort(key=lambda s: s["start_date"])
        for old, new in zip(subs, subs[1:]):
            assert new["start_date"] == old["end_date"] + timedelta(days=1), cid
            assert new["mrr_usd"] != old["mrr_usd"], cid
            moves["expansion" if new["mrr_usd"] > old["mrr_usd"] else "contraction"] += 1
        if subs[-1]["end_date"] is not None:
            churned[segment[cid]] += 1
    assert moves["expansion"] >= 30
    assert moves["contraction"] >= 5
    assert moves["expansion"] > moves["contraction"]
    # Monthly logo churn in 2023-2024 per segment: churned customers / customer-months.
    exposure = Counter()
    for y, m in [(y, m) for y in (2023, 2024) for m in range(1, 13)]:
        day = sd.month_end(y, m)
        for cid in {s["customer_id"] for s in data.subscriptions if sd.is_active_on(s, day)}:
            exposure[segment[cid]] += 1
    rate = {seg: churned[seg] / exposure[seg] for seg in sd.SEGMENTS}
    assert churned["Enterprise"] > 0
    assert rate["SMB"] > rate["Mid-Market"] > rate["Enterprise"]
    assert 0.01 < rate["SMB"] < 0.06
    # Enterprise customers are mostly on annual contracts.
    ent = [s for s in data.subscriptions if segment[s["customer_id"]] == "Enterprise"]
    assert sum(s["billing_cycle"] == "annual" for s in ent) / len(ent) > 0.8


def test_platform_revenue_equals_mrr_in_unchanged_months(con, files) -> None:
    mismatches, checked = _one(
        con,
        "SELECT count(*) FILTER (WHERE o.revenue_usd <> s.mrr_usd), count(*) "
        "FROM read_csv(?) o JOIN read_csv(?) s ON o.customer_id = s.customer_id "
        "AND s.start_date <= o.order_month "
        "AND (s.end_date IS NULL OR s.end_date >= last_day(o.order_month)) "
        "WHERE o.product_line = 'Platform Subscription'",
        [str(files["orders"]), str(files["subscriptions"])],
    )
    assert checked > 1000 and mismatches == 0


def test_cac_per_paid_channel_is_plausible(con, files) -> None:
    rows = con.execute(
        "WITH spend AS (SELECT channel, sum(spend_usd) AS spend FROM read_csv(?) "
        "  WHERE year(month) = 2024 GROUP BY channel), "
        "new AS (SELECT acquisition_channel AS channel, count(*) AS n FROM read_csv(?) "
        "  WHERE year(signup_date) = 2024 GROUP BY 1) "
        "SELECT channel, spend, n, spend / n FROM spend JOIN new USING (channel)",
        [str(files["marketing_spend"]), str(files["customers"])],
    ).fetchall()
    cac = {channel: value for channel, _spend, _n, value in rows}
    assert set(cac) == set(sd.PAID_CHANNELS)  # Referral has no spend rows
    for channel, value in cac.items():
        assert 1_000 < value < 30_000, (channel, value)
    assert min(cac, key=cac.get) == "Content/SEO"
    assert max(cac, key=cac.get) == "Outbound Sales"
    growth = _one(
        con,
        "SELECT sum(spend_usd) FILTER (WHERE year(month) = 2024) "
        "/ sum(spend_usd) FILTER (WHERE year(month) = 2023) FROM read_csv(?)",
        [str(files["marketing_spend"])],
    )[0]
    assert growth > 1.2


def test_sample_questions_are_offered() -> None:
    assert 4 <= len(sd.SAMPLE_QUESTIONS) <= 6
    assert sd.SAMPLE_QUESTIONS[0] == "What was MRR in December 2024?"
    assert all(q.strip().endswith("?") for q in sd.SAMPLE_QUESTIONS)
    assert len(set(sd.SAMPLE_QUESTIONS)) == len(sd.SAMPLE_QUESTIONS)
