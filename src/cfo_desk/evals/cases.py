"""The evaluation cases: SaaS CFO questions over the sample workspace, with pandas ground truth.

Each `EvalCase` has a question precise enough to answer unambiguously (it names the period and the
definition where it matters), the finance definition used and its source, a reference DuckDB SQL
(what the oracle runs through the agent's `run_sql`), and its expected figures (`Figure`: label,
unit, tolerance, and the result column and row of the reference SQL that holds it). The truth of
every figure is computed by `truth(frames)` with pandas from the CSV files `write_sample_files`
writes — never with SQL, and never with the app's code (`reference_mrr` and friends included).

Definitions, stated once (the questions repeat what they use):

- Activity. A subscription is active on day D when start_date <= D and (end_date is empty or
  end_date >= D): both dates are inclusive (sample_data's `MRR_DEFINITION`).
- MRR at a month end = sum of mrr_usd of the subscriptions active on the month's last day; a
  customer's MRR is the same sum over its own subscriptions. A customer is *active* at a month end
  when it has an active subscription then. ARR = 12 × MRR (KeyBanc Capital Markets SaaS Survey).
- MRR movements of a month compare each customer's MRR at the previous month end (start) with its
  MRR at this month end (end): new = end where start = 0 < end; expansion = end − start where
  0 < start < end; contraction = start − end where 0 < end < start; churned = start where
  start > 0 = end (the MRR bridge of ChartMogul / Baremetrics). A year's movements are the sum of
  its twelve months'. MRR(end) = MRR(start) + new + expansion − contraction − churned.
- Logo churn rate of a month = customers active at the previous month end and not at this month
  end / customers active at the previous month end (David Skok, "SaaS Metrics 2.0").
- NRR over a year = MRR at the year end of the customers active at the start / their MRR at the
  start = (start MRR + expansion − contraction − churn) / start MRR of that cohort; GRR caps each
  customer at its start MRR: (start MRR − contraction − churn) / start MRR (KeyBanc SaaS Survey;
  Bessemer "State of the Cloud").
- Revenue = sum of orders.revenue_usd (recognised revenue) by order_month; gross margin =
  (revenue − cost_usd) / revenue (cost of revenue; GAAP gross margin).
- New customers of a period = customers whose signup_date falls in it. CAC of a channel = its
  marketing spend / its new customers; blended CAC = all spend / all new customers, Referral
  included (Skok, "SaaS Metrics 2.0").
- CAC payback (months) = CAC / (average MRR at signup of those new customers × subscription gross
  margin); LTV = ARPU × subscription gross margin / average monthly logo churn rate (Skok).
- SaaS quick ratio = (new + expansion MRR) / (contraction + churned MRR) (Mamoon Hamid).
- CMGR over n months = (end / start)^(1/n) − 1 (a16z, "16 Startup Metrics").

Units: money in USD; rates in percent ('%': 12.5 means 12.5%); counts in 'customers'; payback in
'months'; ratios as 'x'. Tolerances are absolute, in the figure's unit (`DEFAULT_TOLERANCE`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

from cfo_desk.analytics.sample_data import write_sample_files

__all__ = [
    "CASES",
    "DEFAULT_TOLERANCE",
    "EvalCase",
    "ExpectedFigure",
    "Figure",
    "SampleFrames",
    "case_by_name",
    "expected_figures",
    "read_frames",
    "sample_frames",
]

DEFAULT_TOLERANCE = {"USD": 0.01, "%": 0.05, "customers": 0.0, "months": 0.05, "x": 0.01}
"""Absolute tolerance per unit: a cent; 0.05 percentage points (a rate rounded to one decimal
passes); counts exactly; 0.05 months; 0.01 for ratios."""


@dataclass(frozen=True)
class Figure:
    """One expected figure of a case.

    `column` is the column of the reference SQL's result that holds it; `key` picks its row as
    (column, value) — the row whose `key[0]` cell equals `key[1]` — or the first row when None.
    `tolerance` is absolute in `unit`; None means `DEFAULT_TOLERANCE[unit]`."""

    label: str
    unit: str
    column: str
    key: tuple[str, str] | None = None
    tolerance: float | None = None

    @property
    def tol(self) -> float:
        return DEFAULT_TOLERANCE[self.unit] if self.tolerance is None else self.tolerance


@dataclass(frozen=True)
class ExpectedFigure:
    """A figure with its true value (from pandas): what an answer's key figures are matched against."""

    label: str
    value: float
    unit: str
    tolerance: float


@dataclass(frozen=True)
class SampleFrames:
    """The four sample files read by pandas.

    Dates are `datetime64` (end_date NaT while active); money columns are float USD as in the
    files, plus exact integer cents: subscriptions.mrr_cents, orders.revenue_cents and
    orders.cost_cents, marketing_spend.spend_cents."""

    customers: pd.DataFrame
    subscriptions: pd.DataFrame
    orders: pd.DataFrame
    marketing_spend: pd.DataFrame


@dataclass(frozen=True)
class EvalCase:
    """One question of the suite.

    `truth(frames)` returns the true value of each of `figures`, in order (pandas only);
    `mentions(frames)`, when set, returns words the answer's text must contain (e.g. the top
    customer's id). `definition` is the finance definition used, with its source."""

    name: str
    question: str
    definition: str
    sql: str
    figures: tuple[Figure, ...]
    truth: Callable[[SampleFrames], Sequence[float]] = field(repr=False)
    mentions: Callable[[SampleFrames], Sequence[str]] | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------
# pandas ground truth


def read_frames(folder: Path) -> SampleFrames:
    """Read customers.csv, subscriptions.csv, orders.csv and marketing_spend.csv from `folder`."""
    folder = Path(folder)

    def cents(s: pd.Series) -> pd.Series:
        return (s * 100).round().astype("int64")

    customers = pd.read_csv(folder / "customers.csv", parse_dates=["signup_date"])
    subs = pd.read_csv(folder / "subscriptions.csv", parse_dates=["start_date", "end_date"])
    subs["mrr_cents"] = cents(subs["mrr_usd"])
    orders = pd.read_csv(folder / "orders.csv", parse_dates=["order_month"])
    orders["revenue_cents"] = cents(orders["revenue_usd"])
    orders["cost_cents"] = cents(orders["cost_usd"])
    spend = pd.read_csv(folder / "marketing_spend.csv", parse_dates=["month"])
    spend["spend_cents"] = cents(spend["spend_usd"])
    return SampleFrames(customers, subs, orders, spend)


@lru_cache(maxsize=1)
def sample_frames() -> SampleFrames:
    """The default sample (seed `SEED`), written to a temporary folder and read back (~0.2 s, cached)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_sample_files(Path(tmp))
        return read_frames(Path(tmp))


def _month_end(y: int, m: int) -> pd.Timestamp:
    return pd.Timestamp(year=y, month=m, day=1) + pd.offsets.MonthEnd(0)


def _prev(y: int, m: int) -> tuple[int, int]:
    return (y - 1, 12) if m == 1 else (y, m - 1)


def _months(year: int) -> list[tuple[int, int]]:
    return [(year, m) for m in range(1, 13)]


def _usd(cents: float) -> float:
    return round(float(cents)) / 100


def _pct(num: float, den: float) -> float:
    return 100.0 * float(num) / float(den)


def customer_mrr(f: SampleFrames, day: pd.Timestamp) -> pd.Series:
    """Each active customer's MRR on `day`, in cents (customer_id index)."""
    s = f.subscriptions
    active = s[(s["start_date"] <= day) & (s["end_date"].isna() | (s["end_date"] >= day))]
    return active.groupby("customer_id")["mrr_cents"].sum()


def mrr(f: SampleFrames, y: int, m: int) -> int:
    """MRR at the end of (y, m), in cents."""
    return int(customer_mrr(f, _month_end(y, m)).sum())


def _start_end(f: SampleFrames, start_day: pd.Timestamp, end_day: pd.Timestamp) -> pd.DataFrame:
    both = pd.concat(
        [customer_mrr(f, start_day).rename("start"), customer_mrr(f, end_day).rename("end")], axis=1
    )
    return both.fillna(0)


def movements(f: SampleFrames, y: int, m: int) -> dict[str, int]:
    """MRR movements of month (y, m) in cents: new, expansion, contraction, churned."""
    b = _start_end(f, _month_end(*_prev(y, m)), _month_end(y, m))
    return {
        "new": int(b.loc[(b.start == 0) & (b.end > 0), "end"].sum()),
        "expansion": int((b.end - b.start)[(b.start > 0) & (b.end > b.start)].sum()),
        "contraction": int((b.start - b.end)[(b.end > 0) & (b.end < b.start)].sum()),
        "churned": int(b.loc[(b.start > 0) & (b.end == 0), "start"].sum()),
    }


def year_movements(f: SampleFrames, year: int) -> dict[str, int]:
    """The sum of the twelve monthly movements of `year`, in cents."""
    out = {"new": 0, "expansion": 0, "contraction": 0, "churned": 0}
    for y, m in _months(year):
        for k, v in movements(f, y, m).items():
            out[k] += v
    return out


def _ids(f: SampleFrames, **where: str) -> set[str]:
    c = f.customers
    for col, val in where.items():
        c = c[c[col] == val]
    return set(c["customer_id"])


def logo_churn(f: SampleFrames, y: int, m: int, ids: set[str] | None = None) -> float:
    """Logo churn rate of month (y, m) as a fraction, over `ids` (all customers when None)."""
    start = set(customer_mrr(f, _month_end(*_prev(y, m))).index)
    end = set(customer_mrr(f, _month_end(y, m)).index)
    if ids is not None:
        start &= ids
    return len(start - end) / len(start)


def avg_logo_churn(f: SampleFrames, year: int, ids: set[str] | None = None) -> float:
    """Mean of the twelve monthly logo churn rates of `year`, as a fraction."""
    return sum(logo_churn(f, y, m, ids) for y, m in _months(year)) / 12


def retention(f: SampleFrames, year: int, ids: set[str] | None = None) -> tuple[float, float]:
    """(NRR, GRR) in percent over `year` for the customers active at the previous year end."""
    b = _start_end(f, _month_end(year - 1, 12), _month_end(year, 12))
    b = b[b.start > 0]
    if ids is not None:
        b = b[b.index.isin(ids)]
    return _pct(b.end.sum(), b.start.sum()), _pct(b[["start", "end"]].min(axis=1).sum(), b.start.sum())


def _orders_in(f: SampleFrames, year: int, month: int | None = None) -> pd.DataFrame:
    o = f.orders
    o = o[o["order_month"].dt.year == year]
    return o if month is None else o[o["order_month"].dt.month == month]


def _with_customers(o: pd.DataFrame, f: SampleFrames) -> pd.DataFrame:
    return o.merge(f.customers, on="customer_id", how="left", validate="many_to_one")


def gross_margin(o: pd.DataFrame) -> float:
    """(revenue − cost) / revenue of the orders `o`, in percent."""
    return _pct(o["revenue_cents"].sum() - o["cost_cents"].sum(), o["revenue_cents"].sum())


def subscription_margin(f: SampleFrames, year: int) -> float:
    """Gross margin of Platform Subscription orders in `year`, as a fraction."""
    o = _orders_in(f, year)
    return gross_margin(o[o["product_line"] == "Platform Subscription"]) / 100


def new_customers(f: SampleFrames, year: int) -> pd.DataFrame:
    """Customers who signed up in `year`."""
    return f.customers[f.customers["signup_date"].dt.year == year]


def spend(f: SampleFrames, year: int) -> pd.Series:
    """Marketing spend of `year` per channel, in cents."""
    s = f.marketing_spend
    return s[s["month"].dt.year == year].groupby("channel")["spend_cents"].sum()


def cac(f: SampleFrames, year: int) -> dict[str, float]:
    """CAC of `year` per paid channel, in USD."""
    counts = new_customers(f, year)["acquisition_channel"].value_counts()
    return {ch: float(cents) / 100 / int(counts[ch]) for ch, cents in spend(f, year).items()}


def blended_cac(f: SampleFrames, year: int) -> float:
    """All marketing spend of `year` / all customers who signed up in it, in USD."""
    return float(spend(f, year).sum()) / 100 / len(new_customers(f, year))


def arpu(f: SampleFrames, y: int, m: int) -> float:
    """MRR / active customers at the end of (y, m), in USD."""
    c = customer_mrr(f, _month_end(y, m))
    return float(c.sum()) / 100 / len(c)


def signup_mrr(f: SampleFrames) -> pd.Series:
    """Each customer's MRR at signup: mrr_usd of its subscription starting on its signup_date (USD)."""
    s = f.subscriptions.merge(f.customers[["customer_id", "signup_date"]], on="customer_id")
    first = s[s["start_date"] == s["signup_date"]]
    return first.groupby("customer_id")["mrr_cents"].sum() / 100


def ltv(f: SampleFrames, year: int) -> float:
    """ARPU at `year`'s end × subscription gross margin of `year` / its average monthly logo churn (USD)."""
    return arpu(f, year, 12) * subscription_margin(f, year) / avg_logo_churn(f, year)


# ---------------------------------------------------------------------------------------------
# SQL building blocks (DuckDB). Every case's SQL is one SELECT, as the agent's run_sql requires.


def _ts(y: int, m: int) -> str:
    return f"TIMESTAMP '{y:04d}-{m:02d}-01'"


def _next(y: int, m: int) -> tuple[int, int]:
    return (y + 1, 1) if m == 12 else (y, m + 1)


def _customer_mrr_cte(first: tuple[int, int], last: tuple[int, int]) -> str:
    """CTEs month_ends(month_end) for the months first..last and customer_mrr(month_end,
    customer_id, mrr): each active customer's MRR at each of those month ends."""
    return f"""month_ends AS (
    SELECT last_day(CAST(m AS DATE)) AS month_end
    FROM range({_ts(*first)}, {_ts(*_next(*last))}, INTERVAL 1 MONTH) AS t(m)
),
customer_mrr AS (
    SELECT e.month_end, s.customer_id, sum(s.mrr_usd) AS mrr
    FROM month_ends e
    JOIN subscriptions s
      ON s.start_date <= e.month_end AND (s.end_date IS NULL OR s.end_date >= e.month_end)
    GROUP BY e.month_end, s.customer_id
)"""


def _movements_cte(first: tuple[int, int], last: tuple[int, int]) -> str:
    """The customer_mrr CTEs from the month before `first`, then movements(month_end, customer_id,
    start_mrr, end_mrr) for each month first..last (start: the previous month end)."""
    return _customer_mrr_cte(_prev(*first), last) + f""",
movements AS (
    SELECT coalesce(cur.month_end, last_day(prev.month_end + INTERVAL 1 DAY)) AS month_end,
           coalesce(cur.customer_id, prev.customer_id) AS customer_id,
           coalesce(prev.mrr, 0) AS start_mrr,
           coalesce(cur.mrr, 0) AS end_mrr
    FROM (SELECT * FROM customer_mrr WHERE month_end >= DATE '{_month_end(*first).date()}') AS cur
    FULL JOIN (SELECT * FROM customer_mrr WHERE month_end < DATE '{_month_end(*last).date()}') AS prev
      ON prev.customer_id = cur.customer_id AND cur.month_end = last_day(prev.month_end + INTERVAL 1 DAY)
)"""


_MOVEMENT_SUMS = """sum(CASE WHEN start_mrr = 0 AND end_mrr > 0 THEN end_mrr ELSE 0 END) AS new_mrr_usd,
       sum(CASE WHEN start_mrr > 0 AND end_mrr > start_mrr THEN end_mrr - start_mrr ELSE 0 END) AS expansion_mrr_usd,
       sum(CASE WHEN end_mrr > 0 AND end_mrr < start_mrr THEN start_mrr - end_mrr ELSE 0 END) AS contraction_mrr_usd,
       sum(CASE WHEN start_mrr > 0 AND end_mrr = 0 THEN start_mrr ELSE 0 END) AS churned_mrr_usd"""

_LOGO_CHURN_BY_MONTH = """logo_churn AS (
    SELECT month_end,
           count(*) FILTER (WHERE start_mrr > 0 AND end_mrr = 0) / count(*) FILTER (WHERE start_mrr > 0) AS churn_rate
    FROM movements
    GROUP BY month_end
)"""

_SUB_MARGIN_2024 = """sub_margin AS (
    SELECT (sum(revenue_usd) - sum(cost_usd)) / sum(revenue_usd) AS gm
    FROM orders
    WHERE product_line = 'Platform Subscription' AND year(order_month) = 2024
)"""

# ---------------------------------------------------------------------------------------------
# Definitions as the questions state them.

D_MRR = (
    "MRR at a month end = sum of mrr_usd of the subscriptions active on the month's last day "
    "(start_date <= that day and end_date empty or >= that day; end_date is the last day of service)."
)
D_CUSTOMER = (
    "A customer's MRR at a month end is that sum over its own subscriptions; a customer is active at a "
    "month end when it has a subscription active that day."
)
D_MOVES = (
    "MRR movements of a month compare each customer's MRR at the previous month end (start) with its MRR "
    "at this month end (end): new = end where start = 0 and end > 0; expansion = end - start where "
    "0 < start < end; contraction = start - end where 0 < end < start; churned = start where start > 0 "
    "and end = 0."
)
D_LOGO = (
    "Monthly logo churn rate = customers active at the previous month end and not at this month end, "
    "divided by the customers active at the previous month end."
)
D_REVENUE = "Revenue = sum of orders.revenue_usd by order_month; gross margin = (revenue - cost_usd) / revenue."
D_NEW = "New customers of a period = customers whose signup_date falls in it (counted by acquisition_channel)."
D_SUB_GM = (
    "Subscription gross margin 2024 = (revenue - cost_usd) / revenue of the 'Platform Subscription' orders "
    "of 2024."
)
PCT = "Give rates as percentages."
NO_ROUND = "Do not round intermediate results."

SRC_MRR = "sample_data.MRR_DEFINITION: the standard SaaS month-end MRR (KeyBanc Capital Markets SaaS Survey)"
SRC_BRIDGE = "MRR bridge (new/expansion/contraction/churned) as defined by ChartMogul and Baremetrics"
SRC_SKOK = 'David Skok, "SaaS Metrics 2.0" (forEntrepreneurs)'
SRC_RETENTION = 'KeyBanc Capital Markets SaaS Survey; Bessemer "State of the Cloud"'
SRC_GAAP = "GAAP gross margin: (revenue - cost of revenue) / revenue"


def _q(*parts: str) -> str:
    return " ".join(parts)


def _by(key_col: str, values: Sequence[str], column: str, unit: str, label: str, **kw) -> tuple[Figure, ...]:
    return tuple(Figure(f"{label}, {v}", unit, column, key=(key_col, v), **kw) for v in values)


SEGMENTS = ("SMB", "Mid-Market", "Enterprise")
REGIONS = ("North America", "EMEA", "APAC", "LATAM")
PLANS = ("Starter", "Growth", "Scale", "Enterprise")
PRODUCT_LINES = ("Platform Subscription", "Usage Add-ons", "Professional Services")
PAID_CHANNELS = ("Paid Search", "Paid Social", "Content/SEO", "Outbound Sales", "Partner")
ALL_CHANNELS = PAID_CHANNELS + ("Referral",)


def _mrr_sql(day: str) -> str:
    return f"""SELECT sum(mrr_usd) AS mrr_usd
FROM subscriptions
WHERE start_date <= DATE '{day}' AND (end_date IS NULL OR end_date >= DATE '{day}')"""


_MOVE_DEFS = {
    "new": "MRR at the month end of customers with no MRR at the previous month end",
    "expansion": "the MRR increase of customers who had MRR at both month ends and more at the second",
    "contraction": "the MRR decrease of customers who had MRR at both month ends and less at the second",
    "churned": "the previous month end's MRR of customers with no MRR at this month end",
}


def _movement_case(name: str, kind: str, y: int, m: int, label: str) -> EvalCase:
    month = _month_end(y, m).strftime("%B %Y")
    return EvalCase(
        name=name,
        question=_q(f"What was {label} in {month}?", D_MRR, D_CUSTOMER, D_MOVES),
        definition=f"{label[0].upper() + label[1:]} = {_MOVE_DEFS[kind]}; source: {SRC_BRIDGE}.",
        sql=f"WITH {_movements_cte((y, m), (y, m))}\nSELECT {_MOVEMENT_SUMS}\nFROM movements",
        figures=(Figure(f"{label}, {month}", "USD", f"{kind}_mrr_usd"),),
        truth=lambda f: [_usd(movements(f, y, m)[kind])],
    )


def _cases() -> list[EvalCase]:
    cases: list[EvalCase] = []
    add = cases.append

    # --- MRR, ARR, customers, ARPU at a date ----------------------------------------------------
    add(EvalCase(
        name="mrr_2024_12",
        question=_q("What was MRR at the end of December 2024?", D_MRR),
        definition=f"MRR = sum of mrr_usd of subscriptions active on 2024-12-31; source: {SRC_MRR}.",
        sql=_mrr_sql("2024-12-31"),
        figures=(Figure("MRR, December 2024", "USD", "mrr_usd"),),
        truth=lambda f: [_usd(mrr(f, 2024, 12))],
    ))
    add(EvalCase(
        name="arr_2024_12",
        question=_q("What was ARR at the end of December 2024 (ARR = 12 x MRR)?", D_MRR),
        definition=f"ARR = 12 x MRR at 2024-12-31; source: {SRC_MRR}.",
        sql=f"SELECT 12 * mrr_usd AS arr_usd FROM ({_mrr_sql('2024-12-31')})",
        figures=(Figure("ARR, December 2024", "USD", "arr_usd"),),
        truth=lambda f: [_usd(12 * mrr(f, 2024, 12))],
    ))
    add(EvalCase(
        name="mrr_2023_06",
        question=_q("What was MRR at the end of June 2023?", D_MRR),
        definition=f"MRR = sum of mrr_usd of subscriptions active on 2023-06-30; source: {SRC_MRR}.",
        sql=_mrr_sql("2023-06-30"),
        figures=(Figure("MRR, June 2023", "USD", "mrr_usd"),),
        truth=lambda f: [_usd(mrr(f, 2023, 6))],
    ))
    add(EvalCase(
        name="active_customers_2024_12",
        question=_q("How many active customers did we have at the end of December 2024?", D_MRR, D_CUSTOMER),
        definition="Active customers = distinct customer_id with a subscription active on 2024-12-31 "
        f"(the MRR activity rule); source: {SRC_MRR}.",
        sql="""SELECT count(DISTINCT customer_id) AS active_customers
FROM subscriptions
WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')""",
        figures=(Figure("Active customers, December 2024", "customers", "active_customers"),),
        truth=lambda f: [len(customer_mrr(f, _month_end(2024, 12)))],
    ))
    add(EvalCase(
        name="arpu_2024_12",
        question=_q(
            "What was ARPU (average MRR per active customer, USD per month) at the end of December 2024?",
            D_MRR, D_CUSTOMER, NO_ROUND,
        ),
        definition=f"ARPU = MRR / active customers at 2024-12-31; source: {SRC_SKOK}.",
        sql="""SELECT sum(mrr_usd) / count(DISTINCT customer_id) AS arpu_usd
FROM subscriptions
WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')""",
        figures=(Figure("ARPU, December 2024", "USD", "arpu_usd"),),
        truth=lambda f: [arpu(f, 2024, 12)],
    ))
    add(EvalCase(
        name="mrr_by_plan_2024_12",
        question=_q("What was MRR at the end of December 2024 by plan (subscriptions.plan)?", D_MRR),
        definition=f"MRR at 2024-12-31 grouped by the active subscription's plan; source: {SRC_MRR}.",
        sql="""SELECT plan, sum(mrr_usd) AS mrr_usd
FROM subscriptions
WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')
GROUP BY plan ORDER BY plan""",
        figures=_by("plan", PLANS, "mrr_usd", "USD", "MRR December 2024"),
        truth=lambda f: [_usd(_active_subs(f, 2024, 12).groupby("plan")["mrr_cents"].sum()[p]) for p in PLANS],
    ))
    add(EvalCase(
        name="mrr_by_segment_2024_12",
        question=_q("What was MRR at the end of December 2024 by customer segment (customers.segment)?", D_MRR),
        definition=f"MRR at 2024-12-31 grouped by the customer's segment; source: {SRC_MRR}.",
        sql="""SELECT c.segment, sum(s.mrr_usd) AS mrr_usd
FROM subscriptions s JOIN customers c USING (customer_id)
WHERE s.start_date <= DATE '2024-12-31' AND (s.end_date IS NULL OR s.end_date >= DATE '2024-12-31')
GROUP BY c.segment ORDER BY c.segment""",
        figures=_by("segment", SEGMENTS, "mrr_usd", "USD", "MRR December 2024"),
        truth=lambda f: [_usd(_mrr_by_customer_col(f, 2024, 12, "segment")[s]) for s in SEGMENTS],
    ))
    add(EvalCase(
        name="annual_billing_share_2024_12",
        question=_q(
            "What share of MRR at the end of December 2024 came from subscriptions billed annually "
            "(billing_cycle = 'annual')?", D_MRR, PCT, NO_ROUND,
        ),
        definition=f"Annual share = MRR of active annual subscriptions / MRR, at 2024-12-31; source: {SRC_MRR}.",
        sql="""SELECT 100.0 * sum(mrr_usd) FILTER (WHERE billing_cycle = 'annual') / sum(mrr_usd) AS annual_share_pct
FROM subscriptions
WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')""",
        figures=(Figure("Annual billing share of MRR, December 2024", "%", "annual_share_pct"),),
        truth=lambda f: [_annual_share(f, 2024, 12)],
    ))

    # --- MRR movements --------------------------------------------------------------------------
    add(_movement_case("new_mrr_2024_10", "new", 2024, 10, "new MRR"))
    add(_movement_case("expansion_mrr_2024_10", "expansion", 2024, 10, "expansion MRR"))
    add(_movement_case("contraction_mrr_2024_10", "contraction", 2024, 10, "contraction MRR"))
    add(_movement_case("churned_mrr_2024_10", "churned", 2024, 10, "churned MRR"))
    add(EvalCase(
        name="mrr_bridge_2024",
        question=_q(
            "Give the MRR bridge for 2024: new, expansion, contraction and churned MRR, each summed over the "
            "twelve monthly movements of January through December 2024, and net new MRR (MRR at the end of "
            "December 2024 minus MRR at the end of December 2023).", D_MRR, D_CUSTOMER, D_MOVES,
        ),
        definition=f"Sum of the twelve monthly MRR movements of 2024; net new = MRR(2024-12) - MRR(2023-12); source: {SRC_BRIDGE}.",
        sql=f"""WITH {_movements_cte((2024, 1), (2024, 12))}
SELECT {_MOVEMENT_SUMS},
       sum(end_mrr) - sum(start_mrr) AS net_new_mrr_usd
FROM movements""",
        figures=(
            Figure("New MRR, 2024", "USD", "new_mrr_usd"),
            Figure("Expansion MRR, 2024", "USD", "expansion_mrr_usd"),
            Figure("Contraction MRR, 2024", "USD", "contraction_mrr_usd"),
            Figure("Churned MRR, 2024", "USD", "churned_mrr_usd"),
            Figure("Net new MRR, 2024", "USD", "net_new_mrr_usd"),
        ),
        truth=lambda f: [
            *(_usd(v) for v in year_movements(f, 2024).values()),
            _usd(mrr(f, 2024, 12) - mrr(f, 2023, 12)),
        ],
    ))
    add(EvalCase(
        name="quick_ratio_2024",
        question=_q(
            "What was the SaaS quick ratio for 2024, i.e. (new + expansion MRR) / (contraction + churned MRR), "
            "with each movement summed over the twelve months of 2024?", D_MRR, D_CUSTOMER, D_MOVES, NO_ROUND,
        ),
        definition="Quick ratio = (new + expansion MRR) / (contraction + churned MRR) over 2024; source: Mamoon Hamid "
        '(Social Capital), "The SaaS Quick Ratio".',
        sql=f"""WITH {_movements_cte((2024, 1), (2024, 12))},
sums AS (SELECT {_MOVEMENT_SUMS} FROM movements)
SELECT (new_mrr_usd + expansion_mrr_usd) / (contraction_mrr_usd + churned_mrr_usd) AS quick_ratio
FROM sums""",
        figures=(Figure("SaaS quick ratio, 2024", "x", "quick_ratio"),),
        truth=lambda f: [_quick_ratio(year_movements(f, 2024))],
    ))

    # --- churn and retention ----------------------------------------------------------------------
    add(EvalCase(
        name="logo_churn_2024_12",
        question=_q("What was the logo churn rate in December 2024?", D_MRR, D_CUSTOMER, D_LOGO, PCT),
        definition=f"Logo churn = customers active at 2024-11-30 and not at 2024-12-31 / active at 2024-11-30; source: {SRC_SKOK}.",
        sql=f"""WITH {_movements_cte((2024, 12), (2024, 12))}
SELECT 100.0 * count(*) FILTER (WHERE start_mrr > 0 AND end_mrr = 0) / count(*) FILTER (WHERE start_mrr > 0) AS logo_churn_pct
FROM movements""",
        figures=(Figure("Logo churn rate, December 2024", "%", "logo_churn_pct"),),
        truth=lambda f: [100 * logo_churn(f, 2024, 12)],
    ))
    add(EvalCase(
        name="logo_churn_2024_annual",
        question=_q(
            "What share of the customers active at the end of December 2023 were no longer active at the end "
            "of December 2024 (annual logo churn for 2024)?", D_MRR, D_CUSTOMER, PCT,
        ),
        definition=f"Annual logo churn = customers active 2023-12-31 and not 2024-12-31 / active 2023-12-31; source: {SRC_SKOK}.",
        sql=f"""WITH {_customer_mrr_cte((2023, 12), (2024, 12))},
start_customers AS (SELECT customer_id FROM customer_mrr WHERE month_end = DATE '2023-12-31'),
end_customers AS (SELECT customer_id FROM customer_mrr WHERE month_end = DATE '2024-12-31')
SELECT 100.0 * count(*) FILTER (WHERE e.customer_id IS NULL) / count(*) AS annual_logo_churn_pct
FROM start_customers s LEFT JOIN end_customers e USING (customer_id)""",
        figures=(Figure("Annual logo churn, 2024", "%", "annual_logo_churn_pct"),),
        truth=lambda f: [_annual_logo_churn(f, 2024)],
    ))
    add(EvalCase(
        name="avg_monthly_logo_churn_2024_by_segment",
        question=_q(
            "What was the average monthly logo churn rate in 2024 by customer segment (the mean of the twelve "
            "monthly rates January-December 2024, each computed over the segment's customers)?",
            D_MRR, D_CUSTOMER, D_LOGO, PCT, NO_ROUND,
        ),
        definition=f"Mean of the 12 monthly logo churn rates of 2024 per segment; source: {SRC_SKOK}.",
        sql=f"""WITH {_movements_cte((2024, 1), (2024, 12))},
monthly AS (
    SELECT c.segment, m.month_end,
           count(*) FILTER (WHERE m.start_mrr > 0 AND m.end_mrr = 0) / count(*) FILTER (WHERE m.start_mrr > 0) AS churn_rate
    FROM movements m JOIN customers c USING (customer_id)
    GROUP BY c.segment, m.month_end
)
SELECT segment, 100.0 * avg(churn_rate) AS avg_monthly_logo_churn_pct
FROM monthly GROUP BY segment ORDER BY segment""",
        figures=_by("segment", SEGMENTS, "avg_monthly_logo_churn_pct", "%", "Average monthly logo churn 2024"),
        truth=lambda f: [100 * avg_logo_churn(f, 2024, _ids(f, segment=s)) for s in SEGMENTS],
    ))
    add(EvalCase(
        name="revenue_churn_2024_12",
        question=_q(
            "What was the gross MRR churn rate in December 2024, i.e. (churned MRR + contraction MRR of "
            "December 2024) / MRR at the end of November 2024?", D_MRR, D_CUSTOMER, D_MOVES, PCT,
        ),
        definition=f"Gross MRR churn = (churned + contraction MRR) / starting MRR; source: {SRC_SKOK}.",
        sql=f"""WITH {_movements_cte((2024, 12), (2024, 12))},
sums AS (SELECT {_MOVEMENT_SUMS}, sum(start_mrr) AS start_mrr_usd FROM movements)
SELECT 100.0 * (churned_mrr_usd + contraction_mrr_usd) / start_mrr_usd AS gross_mrr_churn_pct FROM sums""",
        figures=(Figure("Gross MRR churn rate, December 2024", "%", "gross_mrr_churn_pct"),),
        truth=lambda f: [_gross_mrr_churn(f, 2024, 12)],
    ))
    nrr_question = (
        "NRR for 2024 = MRR at the end of December 2024 of the customers active at the end of December 2023, "
        "divided by their MRR at the end of December 2023; GRR for 2024 = the same with each customer's "
        "December 2024 MRR capped at its December 2023 MRR."
    )
    add(EvalCase(
        name="nrr_2024",
        question=_q("What was net revenue retention (NRR) for 2024?", nrr_question, D_MRR, D_CUSTOMER, PCT),
        definition=f"NRR = (start MRR + expansion - contraction - churn) / start MRR of the 2023-12-31 customers; source: {SRC_RETENTION}.",
        sql=_retention_sql(by_segment=False),
        figures=(Figure("NRR, 2024", "%", "nrr_pct"),),
        truth=lambda f: [retention(f, 2024)[0]],
    ))
    add(EvalCase(
        name="grr_2024",
        question=_q("What was gross revenue retention (GRR) for 2024?", nrr_question, D_MRR, D_CUSTOMER, PCT),
        definition=f"GRR = (start MRR - contraction - churn) / start MRR of the 2023-12-31 customers; source: {SRC_RETENTION}.",
        sql=_retention_sql(by_segment=False),
        figures=(Figure("GRR, 2024", "%", "grr_pct"),),
        truth=lambda f: [retention(f, 2024)[1]],
    ))
    add(EvalCase(
        name="nrr_2024_by_segment",
        question=_q("What was NRR for 2024 by customer segment?", nrr_question, D_MRR, D_CUSTOMER, PCT),
        definition=f"NRR per segment of the 2023-12-31 customers; source: {SRC_RETENTION}.",
        sql=_retention_sql(by_segment=True),
        figures=_by("segment", SEGMENTS, "nrr_pct", "%", "NRR 2024"),
        truth=lambda f: [retention(f, 2024, _ids(f, segment=s))[0] for s in SEGMENTS],
    ))
    add(EvalCase(
        name="cohort_retention_2023_by_quarter",
        question=_q(
            "For the customers who signed up in each quarter of 2023 (by signup_date), what share was still "
            "active at the end of December 2024?", D_MRR, D_CUSTOMER, PCT, NO_ROUND,
        ),
        definition="Logo retention of a signup cohort = cohort customers active at 2024-12-31 / cohort size; "
        f"source: cohort analysis as in {SRC_SKOK}.",
        sql="""WITH active_end AS (
    SELECT DISTINCT customer_id FROM subscriptions
    WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')
)
SELECT 'Q' || quarter(c.signup_date) AS signup_quarter,
       100.0 * count(a.customer_id) / count(*) AS retained_pct
FROM customers c LEFT JOIN active_end a USING (customer_id)
WHERE year(c.signup_date) = 2023
GROUP BY signup_quarter ORDER BY signup_quarter""",
        figures=_by("signup_quarter", ("Q1", "Q2", "Q3", "Q4"), "retained_pct", "%", "Still active Dec 2024, 2023 signups"),
        truth=lambda f: _cohort_retention(f, 2023),
    ))

    # --- revenue and margin -----------------------------------------------------------------------
    add(EvalCase(
        name="revenue_2024_by_segment",
        question=_q("What was revenue in 2024 by customer segment?", D_REVENUE),
        definition=f"Recognised revenue (orders.revenue_usd, order_month in 2024) by customers.segment; source: {SRC_GAAP}.",
        sql=_orders_by_customer_sql("segment", "sum(o.revenue_usd) AS revenue_usd"),
        figures=_by("segment", SEGMENTS, "revenue_usd", "USD", "Revenue 2024"),
        truth=lambda f: [_usd(_orders_by(f, 2024, "segment")["revenue_cents"].sum()[s]) for s in SEGMENTS],
    ))
    add(EvalCase(
        name="gross_margin_2024_by_segment",
        question=_q("What was gross margin in 2024 by customer segment?", D_REVENUE, PCT, NO_ROUND),
        definition=f"Gross margin = (revenue - cost_usd) / revenue of 2024 orders per segment; source: {SRC_GAAP}.",
        sql=_orders_by_customer_sql(
            "segment", "100.0 * (sum(o.revenue_usd) - sum(o.cost_usd)) / sum(o.revenue_usd) AS gross_margin_pct"
        ),
        figures=_by("segment", SEGMENTS, "gross_margin_pct", "%", "Gross margin 2024"),
        truth=lambda f: [_margins(_orders_by(f, 2024, "segment"))[s] for s in SEGMENTS],
    ))
    add(EvalCase(
        name="revenue_2024_by_region",
        question=_q("What was revenue in 2024 by region (customers.region)?", D_REVENUE),
        definition=f"Recognised revenue of 2024 by customers.region; source: {SRC_GAAP}.",
        sql=_orders_by_customer_sql("region", "sum(o.revenue_usd) AS revenue_usd"),
        figures=_by("region", REGIONS, "revenue_usd", "USD", "Revenue 2024"),
        truth=lambda f: [_usd(_orders_by(f, 2024, "region")["revenue_cents"].sum()[r]) for r in REGIONS],
    ))
    add(EvalCase(
        name="gross_margin_2024_by_product_line",
        question=_q("What was gross margin in 2024 by product line (orders.product_line)?", D_REVENUE, PCT, NO_ROUND),
        definition=f"Gross margin of 2024 orders per product line; source: {SRC_GAAP}.",
        sql="""SELECT product_line, 100.0 * (sum(revenue_usd) - sum(cost_usd)) / sum(revenue_usd) AS gross_margin_pct
FROM orders WHERE year(order_month) = 2024
GROUP BY product_line ORDER BY product_line""",
        figures=_by("product_line", PRODUCT_LINES, "gross_margin_pct", "%", "Gross margin 2024"),
        truth=lambda f: [_margins(_orders_in(f, 2024).groupby("product_line"))[p] for p in PRODUCT_LINES],
    ))
    add(EvalCase(
        name="revenue_growth_2024",
        question=_q(
            "What was total revenue in 2023 and in 2024, and the year-over-year growth of 2024 over 2023?",
            D_REVENUE, PCT, NO_ROUND,
        ),
        definition="YoY growth = revenue 2024 / revenue 2023 - 1 (recognised revenue, orders.revenue_usd); standard growth rate.",
        sql="""WITH y AS (
    SELECT sum(revenue_usd) FILTER (WHERE year(order_month) = 2023) AS revenue_2023_usd,
           sum(revenue_usd) FILTER (WHERE year(order_month) = 2024) AS revenue_2024_usd
    FROM orders
)
SELECT revenue_2023_usd, revenue_2024_usd, 100.0 * (revenue_2024_usd / revenue_2023_usd - 1) AS yoy_growth_pct FROM y""",
        figures=(
            Figure("Revenue, 2023", "USD", "revenue_2023_usd"),
            Figure("Revenue, 2024", "USD", "revenue_2024_usd"),
            Figure("Revenue growth, 2024 vs 2023", "%", "yoy_growth_pct"),
        ),
        truth=lambda f: _revenue_growth(f),
    ))
    add(EvalCase(
        name="revenue_mom_growth_2024_12",
        question=_q("By how much did total revenue grow in December 2024 over November 2024 (month over month)?", D_REVENUE, PCT, NO_ROUND),
        definition="MoM growth = revenue(Dec 2024) / revenue(Nov 2024) - 1; standard growth rate.",
        sql="""WITH m AS (
    SELECT sum(revenue_usd) FILTER (WHERE order_month = DATE '2024-11-01') AS nov,
           sum(revenue_usd) FILTER (WHERE order_month = DATE '2024-12-01') AS dec
    FROM orders
)
SELECT 100.0 * (dec / nov - 1) AS revenue_mom_growth_pct FROM m""",
        figures=(Figure("Revenue growth, Dec 2024 vs Nov 2024", "%", "revenue_mom_growth_pct"),),
        truth=lambda f: [_pct(_orders_in(f, 2024, 12)["revenue_cents"].sum(), _orders_in(f, 2024, 11)["revenue_cents"].sum()) - 100],
    ))
    add(EvalCase(
        name="top_customers_2024",
        question=_q(
            "Which customer brought the most revenue in 2024 (give its customer_id and its 2024 revenue), and "
            "what share of 2024 revenue came from the top 10 customers by 2024 revenue?", D_REVENUE, PCT, NO_ROUND,
        ),
        definition="Revenue concentration: top customer's revenue and top-10 share of total 2024 revenue.",
        sql="""WITH r AS (
    SELECT customer_id, sum(revenue_usd) AS revenue_usd FROM orders
    WHERE year(order_month) = 2024 GROUP BY customer_id
),
ranked AS (SELECT *, row_number() OVER (ORDER BY revenue_usd DESC) AS rank FROM r)
SELECT customer_id, revenue_usd,
       100.0 * (SELECT sum(revenue_usd) FROM ranked WHERE rank <= 10) / (SELECT sum(revenue_usd) FROM r) AS top10_share_pct
FROM ranked WHERE rank = 1""",
        figures=(
            Figure("Revenue of the top customer, 2024", "USD", "revenue_usd"),
            Figure("Top-10 customers' share of 2024 revenue", "%", "top10_share_pct"),
        ),
        truth=lambda f: _top_customers(f)[1:],
        mentions=lambda f: [_top_customers(f)[0]],
    ))

    # --- growth ------------------------------------------------------------------------------------
    add(EvalCase(
        name="mrr_mom_growth_2024_12",
        question=_q("What was MRR growth in December 2024 over November 2024 (month over month)?", D_MRR, PCT, NO_ROUND),
        definition=f"MoM MRR growth = MRR(2024-12-31) / MRR(2024-11-30) - 1; source: {SRC_MRR}.",
        sql=f"""WITH {_customer_mrr_cte((2024, 11), (2024, 12))},
m AS (SELECT month_end, sum(mrr) AS mrr FROM customer_mrr GROUP BY month_end)
SELECT 100.0 * (max(mrr) FILTER (WHERE month_end = DATE '2024-12-31') / max(mrr) FILTER (WHERE month_end = DATE '2024-11-30') - 1)
       AS mrr_mom_growth_pct
FROM m""",
        figures=(Figure("MRR growth, Dec 2024 vs Nov 2024", "%", "mrr_mom_growth_pct"),),
        truth=lambda f: [_pct(mrr(f, 2024, 12), mrr(f, 2024, 11)) - 100],
    ))
    add(EvalCase(
        name="mrr_cmgr_2024",
        question=_q(
            "What was the compound monthly growth rate (CMGR) of MRR over 2024, from the end of December 2023 "
            "to the end of December 2024 (12 months): (MRR Dec 2024 / MRR Dec 2023)^(1/12) - 1?",
            D_MRR, PCT, NO_ROUND,
        ),
        definition='CMGR = (end MRR / start MRR)^(1/12) - 1; source: a16z, "16 Startup Metrics".',
        sql=f"""WITH {_customer_mrr_cte((2023, 12), (2024, 12))},
m AS (SELECT month_end, sum(mrr) AS mrr FROM customer_mrr GROUP BY month_end)
SELECT 100.0 * (pow(max(mrr) FILTER (WHERE month_end = DATE '2024-12-31') / max(mrr) FILTER (WHERE month_end = DATE '2023-12-31'), 1.0 / 12) - 1)
       AS mrr_cmgr_pct
FROM m""",
        figures=(Figure("MRR CMGR, 2024", "%", "mrr_cmgr_pct"),),
        truth=lambda f: [100 * ((mrr(f, 2024, 12) / mrr(f, 2023, 12)) ** (1 / 12) - 1)],
    ))

    # --- acquisition: new customers, CAC, payback, LTV -----------------------------------------------
    add(EvalCase(
        name="new_customers_2024_by_channel",
        question=_q("How many new customers did we acquire in 2024 by acquisition channel?", D_NEW),
        definition="New customers = customers with signup_date in 2024, by acquisition_channel.",
        sql="""SELECT acquisition_channel, count(*) AS new_customers
FROM customers WHERE year(signup_date) = 2024
GROUP BY acquisition_channel ORDER BY acquisition_channel""",
        figures=_by("acquisition_channel", ALL_CHANNELS, "new_customers", "customers", "New customers 2024"),
        truth=lambda f: [int(new_customers(f, 2024)["acquisition_channel"].value_counts()[c]) for c in ALL_CHANNELS],
    ))
    cac_def = (
        "CAC of a channel for 2024 = its marketing_spend.spend_usd in 2024 / its new customers of 2024 "
        "(customers.acquisition_channel = marketing_spend.channel)."
    )
    add(EvalCase(
        name="cac_2024_by_channel",
        question=_q("What was CAC in 2024 by paid acquisition channel?", cac_def, D_NEW, NO_ROUND),
        definition=f"CAC = spend / new customers, per channel, 2024; source: {SRC_SKOK}.",
        sql=_cac_sql() + "\nSELECT channel, cac_usd FROM cac ORDER BY channel",
        figures=_by("channel", PAID_CHANNELS, "cac_usd", "USD", "CAC 2024"),
        truth=lambda f: [cac(f, 2024)[c] for c in PAID_CHANNELS],
    ))
    blended_def = "Blended CAC for 2024 = all marketing spend of 2024 / all customers who signed up in 2024 (Referral included)."
    add(EvalCase(
        name="blended_cac_2024",
        question=_q("What was blended CAC in 2024?", blended_def, NO_ROUND),
        definition=f"Blended CAC = total spend / all new customers, 2024; source: {SRC_SKOK}.",
        sql="""SELECT (SELECT sum(spend_usd) FROM marketing_spend WHERE year(month) = 2024)
       / (SELECT count(*) FROM customers WHERE year(signup_date) = 2024) AS blended_cac_usd""",
        figures=(Figure("Blended CAC, 2024", "USD", "blended_cac_usd"),),
        truth=lambda f: [blended_cac(f, 2024)],
    ))
    add(EvalCase(
        name="cac_payback_2024_by_channel",
        question=_q(
            "What was the CAC payback period in months for 2024 by paid channel? Payback = CAC / (average MRR at "
            "signup of the channel's 2024 new customers x subscription gross margin 2024), where a customer's MRR "
            "at signup is the mrr_usd of its subscription whose start_date equals its signup_date.",
            cac_def, D_SUB_GM, NO_ROUND,
        ),
        definition=f"CAC payback (months) = CAC / (new-customer MRR x gross margin); source: {SRC_SKOK}.",
        sql=_cac_sql() + f""",
{_SUB_MARGIN_2024},
signup_mrr AS (
    SELECT c.acquisition_channel AS channel, avg(s.mrr_usd) AS avg_signup_mrr
    FROM customers c JOIN subscriptions s ON s.customer_id = c.customer_id AND s.start_date = c.signup_date
    WHERE year(c.signup_date) = 2024
    GROUP BY c.acquisition_channel
)
SELECT cac.channel, cac.cac_usd / (signup_mrr.avg_signup_mrr * sub_margin.gm) AS payback_months
FROM cac JOIN signup_mrr USING (channel) CROSS JOIN sub_margin
ORDER BY cac.channel""",
        figures=_by("channel", PAID_CHANNELS, "payback_months", "months", "CAC payback 2024"),
        truth=lambda f: _payback(f, 2024),
    ))
    ltv_def = (
        "LTV = ARPU at the end of December 2024 (MRR / active customers) x subscription gross margin 2024 / "
        "average monthly logo churn rate of 2024 (the mean of the twelve monthly rates, as a fraction)."
    )
    add(EvalCase(
        name="ltv_2024",
        question=_q("What is customer lifetime value (LTV) in USD?", ltv_def, D_SUB_GM, D_MRR, D_CUSTOMER, D_LOGO, NO_ROUND),
        definition=f"LTV = ARPU x gross margin / monthly churn; source: {SRC_SKOK}.",
        sql=_ltv_sql() + "\nSELECT ltv_usd FROM ltv",
        figures=(Figure("LTV, 2024", "USD", "ltv_usd", tolerance=1.0),),
        truth=lambda f: [ltv(f, 2024)],
    ))
    add(EvalCase(
        name="ltv_to_cac_2024",
        question=_q("What is the LTV to CAC ratio for 2024, using blended CAC?", ltv_def, blended_def, D_SUB_GM, D_MRR, D_CUSTOMER, D_LOGO, NO_ROUND),
        definition=f"LTV:CAC = LTV / blended CAC; source: {SRC_SKOK}.",
        sql=_ltv_sql() + """
SELECT ltv_usd / ((SELECT sum(spend_usd) FROM marketing_spend WHERE year(month) = 2024)
                  / (SELECT count(*) FROM customers WHERE year(signup_date) = 2024)) AS ltv_to_cac
FROM ltv""",
        figures=(Figure("LTV to blended CAC, 2024", "x", "ltv_to_cac"),),
        truth=lambda f: [ltv(f, 2024) / blended_cac(f, 2024)],
    ))
    return cases


# --- pandas helpers used by single cases ----------------------------------------------------------


def _active_subs(f: SampleFrames, y: int, m: int) -> pd.DataFrame:
    day = _month_end(y, m)
    s = f.subscriptions
    return s[(s["start_date"] <= day) & (s["end_date"].isna() | (s["end_date"] >= day))]


def _mrr_by_customer_col(f: SampleFrames, y: int, m: int, col: str) -> pd.Series:
    return _with_customers(_active_subs(f, y, m), f).groupby(col)["mrr_cents"].sum()


def _annual_share(f: SampleFrames, y: int, m: int) -> float:
    s = _active_subs(f, y, m)
    return _pct(s.loc[s["billing_cycle"] == "annual", "mrr_cents"].sum(), s["mrr_cents"].sum())


def _quick_ratio(mv: dict[str, int]) -> float:
    return (mv["new"] + mv["expansion"]) / (mv["contraction"] + mv["churned"])


def _annual_logo_churn(f: SampleFrames, year: int) -> float:
    start = set(customer_mrr(f, _month_end(year - 1, 12)).index)
    end = set(customer_mrr(f, _month_end(year, 12)).index)
    return _pct(len(start - end), len(start))


def _gross_mrr_churn(f: SampleFrames, y: int, m: int) -> float:
    mv = movements(f, y, m)
    return _pct(mv["churned"] + mv["contraction"], mrr(f, *_prev(y, m)))


def _cohort_retention(f: SampleFrames, year: int) -> list[float]:
    active = set(customer_mrr(f, _month_end(2024, 12)).index)
    cohort = new_customers(f, year)
    out = []
    for q in (1, 2, 3, 4):
        ids = cohort.loc[cohort["signup_date"].dt.quarter == q, "customer_id"]
        out.append(_pct(ids.isin(active).sum(), len(ids)))
    return out


def _orders_by(f: SampleFrames, year: int, col: str):
    return _with_customers(_orders_in(f, year), f).groupby(col)


def _margins(groups) -> dict[str, float]:
    return {key: gross_margin(g) for key, g in groups}


def _revenue_growth(f: SampleFrames) -> list[float]:
    r23 = _orders_in(f, 2023)["revenue_cents"].sum()
    r24 = _orders_in(f, 2024)["revenue_cents"].sum()
    return [_usd(r23), _usd(r24), _pct(r24, r23) - 100]


def _top_customers(f: SampleFrames) -> tuple[str, float, float]:
    by = _orders_in(f, 2024).groupby("customer_id")["revenue_cents"].sum().sort_values(ascending=False)
    return str(by.index[0]), _usd(by.iloc[0]), _pct(by.iloc[:10].sum(), by.sum())


def _payback(f: SampleFrames, year: int) -> list[float]:
    new = new_customers(f, year)
    at_signup = signup_mrr(f)
    gm = subscription_margin(f, year)
    costs = cac(f, year)
    out = []
    for ch in PAID_CHANNELS:
        ids = new.loc[new["acquisition_channel"] == ch, "customer_id"]
        out.append(costs[ch] / (float(at_signup[ids].mean()) * gm))
    return out


# --- SQL helpers used by single cases ------------------------------------------------------------


def _retention_sql(*, by_segment: bool) -> str:
    seg, group, order = ("c.segment, ", "GROUP BY c.segment ", "ORDER BY c.segment") if by_segment else ("", "", "")
    return f"""WITH {_customer_mrr_cte((2023, 12), (2024, 12))},
start_mrr AS (SELECT customer_id, mrr FROM customer_mrr WHERE month_end = DATE '2023-12-31'),
end_mrr AS (SELECT customer_id, mrr FROM customer_mrr WHERE month_end = DATE '2024-12-31')
SELECT {seg}100.0 * sum(coalesce(e.mrr, 0)) / sum(s.mrr) AS nrr_pct,
       100.0 * sum(least(coalesce(e.mrr, 0), s.mrr)) / sum(s.mrr) AS grr_pct
FROM start_mrr s LEFT JOIN end_mrr e USING (customer_id)
{'JOIN customers c USING (customer_id)' if by_segment else ''}
{group}{order}""".rstrip()


def _orders_by_customer_sql(col: str, measure: str) -> str:
    return f"""SELECT c.{col}, {measure}
FROM orders o JOIN customers c USING (customer_id)
WHERE year(o.order_month) = 2024
GROUP BY c.{col} ORDER BY c.{col}"""


def _cac_sql() -> str:
    return """WITH spend AS (
    SELECT channel, sum(spend_usd) AS spend_usd FROM marketing_spend WHERE year(month) = 2024 GROUP BY channel
),
acquired AS (
    SELECT acquisition_channel AS channel, count(*) AS new_customers FROM customers
    WHERE year(signup_date) = 2024 GROUP BY acquisition_channel
),
cac AS (SELECT channel, spend_usd / new_customers AS cac_usd FROM spend JOIN acquired USING (channel))"""


def _ltv_sql() -> str:
    return f"""WITH {_movements_cte((2024, 1), (2024, 12))},
{_LOGO_CHURN_BY_MONTH},
{_SUB_MARGIN_2024},
arpu AS (
    SELECT sum(mrr) / count(*) AS arpu_usd FROM customer_mrr WHERE month_end = DATE '2024-12-31'
),
ltv AS (
    SELECT arpu.arpu_usd * sub_margin.gm / (SELECT avg(churn_rate) FROM logo_churn) AS ltv_usd
    FROM arpu CROSS JOIN sub_margin
)"""


CASES: tuple[EvalCase, ...] = tuple(_cases())


def case_by_name(name: str) -> EvalCase:
    """The case named `name`; raises KeyError listing the names."""
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"No case named {name!r}; cases: {', '.join(c.name for c in CASES)}")


def expected_figures(case: EvalCase, frames: SampleFrames | None = None) -> list[ExpectedFigure]:
    """The case's figures with their true values (pandas, from the sample files)."""
    values = list(case.truth(frames or sample_frames()))
    if len(values) != len(case.figures):
        raise ValueError(f"{case.name}: truth gave {len(values)} values for {len(case.figures)} figures")
    return [ExpectedFigure(fig.label, float(v), fig.unit, fig.tol) for fig, v in zip(case.figures, values, strict=True)]
