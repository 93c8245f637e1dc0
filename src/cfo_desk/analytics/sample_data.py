"""Deterministic sample SaaS workspace ("Load sample workspace").

`write_sample_files(dest_dir)` writes four CSV files (UTF-8 without BOM, comma-separated, ``\\n``
line endings, one header row, no index column, dates as ISO ``YYYY-MM-DD``, money in USD with
exactly two decimals). Every call with the default seed (`SEED` = 20230101) writes byte-identical
files: all randomness comes from one ``random.Random(SEED)`` and nothing reads the clock.

The reporting period is January 2023 through December 2024 (24 months); the data cut-off is
2024-12-31, so no date in any file is later than that.

Files
-----
customers.csv (one row per customer)
    customer_id (``C0001``...; numbered in signup order), company_name, segment (SMB /
    Mid-Market / Enterprise), industry, region (North America / EMEA / APAC / LATAM),
    acquisition_channel (Paid Search / Paid Social / Content/SEO / Outbound Sales / Partner /
    Referral), signup_date. Customers with a signup_date before 2023-01-01 are the *opening book*:
    acquired before the period (no marketing spend rows exist for them) and all still active on
    2023-01-01. Every other customer signed up inside the period.
subscriptions.csv (one row per subscription; a customer has one or more, never overlapping)
    subscription_id (``S00001``...), customer_id, plan (Starter / Growth / Scale / Enterprise),
    billing_cycle (monthly / annual), start_date, end_date, mrr_usd, list_price_usd.
    Dates are inclusive: start_date is the first and end_date the last day of service; end_date
    is empty while the subscription is active at the cut-off. list_price_usd is the price per
    billing period (a month for monthly, a year for annual); mrr_usd is the monthly recurring
    revenue in USD: list_price_usd for monthly, round(list_price_usd / 12, 2) for annual. Annual
    catalog prices are ten times the monthly price (two months free); the Enterprise plan is
    annual only with a negotiated contract price.
    A plan change ends the old subscription on day D and starts the new one on day D + 1, on a
    higher plan (expansion, at any time) or a lower plan (contraction: monthly subscriptions at
    any time, annual ones at renewal). Churn is an end_date with no successor (annual
    subscriptions churn at the end of a contract year, so end_date is the day before an
    anniversary of start_date).
orders.csv (one row per customer, month and product line)
    order_id (``O000001``...), customer_id, order_month (first day of the month), revenue_usd,
    cost_usd, profit_usd (= round(revenue_usd - cost_usd, 2)), product_line, for the 24 months of
    the period only. Revenue is *recognised* revenue (annual contracts recognised ratably, not
    cash billings):
    - ``Platform Subscription``: for each subscription overlapping the month,
      mrr_usd * (days of service in the month / days in the month), summed and rounded to cents.
      So in a month where a customer's subscription neither starts nor ends, its revenue equals
      that subscription's mrr_usd, and monthly Platform Subscription revenue is close to, but
      not equal to, MRR (MRR is a month-end snapshot; revenue is prorated over the month).
    - ``Usage Add-ons``: variable usage revenue of some Growth/Scale/Enterprise customers.
    - ``Professional Services``: one-off onboarding fees in the signup month.
    Costs are cost of revenue (hosting/support for subscriptions, delivery for services).
marketing_spend.csv (one row per month and paid channel)
    month (first day of the month), channel, spend_usd for 2023-01 .. 2024-12. Referral has no
    spend and no rows. New customers per paid channel-month are drawn around spend / CAC with
    target CACs of roughly 1.8k (Content/SEO) to 16k (Outbound Sales) USD.

MRR definition
--------------
The standard SaaS definition: MRR is the normalised monthly recurring revenue of the
subscriptions active at the end of the period; here precisely `MRR_DEFINITION`. Because
end_date is inclusive, a subscription ending on the month's last day still counts for that
month (and its successor, starting the next day, does not), so no customer is counted twice or
dropped at a plan change. Active customers at a month end are the distinct customer_ids with a
subscription active on that day by the same rule.

Shapes: the opening book is 130 customers; signups grow from about 15 to about 25 a month; SMB
churns more than Mid-Market and Enterprise; Enterprise customers are mostly on annual contracts.
"""

from __future__ import annotations

import calendar
import csv
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

__all__ = [
    "SEED",
    "PERIOD_START",
    "PERIOD_END",
    "FILE_NAMES",
    "CUSTOMER_COLUMNS",
    "SUBSCRIPTION_COLUMNS",
    "ORDER_COLUMNS",
    "MARKETING_SPEND_COLUMNS",
    "SEGMENTS",
    "PLANS",
    "CHANNELS",
    "PAID_CHANNELS",
    "PRODUCT_LINES",
    "MRR_DEFINITION",
    "SAMPLE_QUESTIONS",
    "SampleData",
    "generate",
    "write_sample_files",
    "load_subscriptions",
    "month_end",
    "is_active_on",
    "reference_mrr",
    "reference_active_customers",
]

SEED = 20230101
PERIOD_START = date(2023, 1, 1)
PERIOD_END = date(2024, 12, 31)  # data cut-off: no date in any file is later

FILE_NAMES: tuple[str, str, str, str] = (
    "customers.csv",
    "subscriptions.csv",
    "orders.csv",
    "marketing_spend.csv",
)
CUSTOMER_COLUMNS = (
    "customer_id", "company_name", "segment", "industry", "region", "acquisition_channel",
    "signup_date",
)
SUBSCRIPTION_COLUMNS = (
    "subscription_id", "customer_id", "plan", "billing_cycle", "start_date", "end_date",
    "mrr_usd", "list_price_usd",
)
ORDER_COLUMNS = (
    "order_id", "customer_id", "order_month", "revenue_usd", "cost_usd", "profit_usd",
    "product_line",
)
MARKETING_SPEND_COLUMNS = ("month", "channel", "spend_usd")

SEGMENTS = ("SMB", "Mid-Market", "Enterprise")
PLANS = ("Starter", "Growth", "Scale", "Enterprise")  # ascending
INDUSTRIES = (
    "Software", "Healthcare", "Retail", "Financial Services", "Manufacturing", "Education",
    "Media",
)
REGIONS = ("North America", "EMEA", "APAC", "LATAM")
CHANNELS = (
    "Paid Search", "Paid Social", "Content/SEO", "Outbound Sales", "Partner", "Referral",
)
PAID_CHANNELS = CHANNELS[:5]
PRODUCT_LINES = ("Platform Subscription", "Usage Add-ons", "Professional Services")

MRR_DEFINITION = (
    "MRR for a month = sum of mrr_usd of the subscriptions active on the month's last day, "
    "i.e. start_date <= month end and (end_date is null or end_date >= month end), "
    "because end_date is the last day of service (inclusive)."
)

SAMPLE_QUESTIONS: list[str] = [
    "What was MRR in December 2024?",
    "How did MRR grow month by month from January 2023 to December 2024?",
    "Which acquisition channel has the lowest CAC in 2024?",
    "What is monthly logo churn by segment in 2024?",
    "What was gross margin by product line in 2024?",
    "How many active customers did we have at the end of each quarter of 2024, by region?",
]

# --- generation parameters -------------------------------------------------------------------

_MONTHLY_PRICE = {"Starter": 99.0, "Growth": 399.0, "Scale": 999.0}  # USD per month
_ANNUAL_MULTIPLE = 10  # annual catalog price = 10 x monthly price (two months free)
_ENTERPRISE_ANNUAL = (30000.0, 36000.0, 48000.0, 60000.0, 72000.0, 96000.0)  # USD per year

_SEGMENT_PLAN_WEIGHTS = {
    "SMB": (0.70, 0.27, 0.03, 0.0),
    "Mid-Market": (0.10, 0.55, 0.35, 0.0),
    "Enterprise": (0.0, 0.10, 0.40, 0.50),
}
_SEGMENT_ANNUAL_SHARE = {"SMB": 0.25, "Mid-Market": 0.55, "Enterprise": 0.90}
_SEGMENT_TOP_PLAN = {"SMB": "Scale", "Mid-Market": "Enterprise", "Enterprise": "Enterprise"}
# Monthly hazards (per month) and per-renewal probabilities.
_CHURN_MONTHLY = {"SMB": 0.035, "Mid-Market": 0.018, "Enterprise": 0.008}
_CHURN_AT_RENEWAL = {"SMB": 0.25, "Mid-Market": 0.14, "Enterprise": 0.07}
_UPGRADE_MONTHLY = {"SMB": 0.012, "Mid-Market": 0.018, "Enterprise": 0.02}
_DOWNGRADE_MONTHLY = 0.004
_DOWNGRADE_AT_RENEWAL = 0.06

# Paid channels: target CAC (USD) and share of paid signups at the start of the period.
_TARGET_CAC = {
    "Paid Search": 3500.0, "Paid Social": 2800.0, "Content/SEO": 1800.0,
    "Outbound Sales": 16000.0, "Partner": 7500.0,
}
_PAID_SHARE = {
    "Paid Search": 0.32, "Paid Social": 0.20, "Content/SEO": 0.22,
    "Outbound Sales": 0.14, "Partner": 0.12,
}
_PAID_SIGNUPS_FIRST_MONTH = 12.0
_MONTHLY_BUDGET_GROWTH = 1.03
_CHANNEL_SEGMENT_WEIGHTS = {
    "Paid Search": (0.70, 0.25, 0.05),
    "Paid Social": (0.85, 0.13, 0.02),
    "Content/SEO": (0.65, 0.28, 0.07),
    "Outbound Sales": (0.10, 0.45, 0.45),
    "Partner": (0.30, 0.45, 0.25),
    "Referral": (0.55, 0.33, 0.12),
}
_OPENING_BOOK_SIZE = 130
_REGION_WEIGHTS = (0.50, 0.28, 0.14, 0.08)
_LEGAL_SUFFIX = {"North America": "Inc.", "EMEA": "Ltd", "APAC": "Pte Ltd", "LATAM": "S.A."}
_NAME_FIRST = (
    "Blue", "North", "Bright", "Silver", "Granite", "Cedar", "Summit", "Harbor", "Atlas", "Nova",
    "Vertex", "Lumen", "Pioneer", "Crescent", "Evergreen", "Iron", "Maple", "Orbit", "Prairie",
    "Quartz", "Redwood", "Sterling", "Tidal", "Union", "Willow", "Zenith", "Aspen", "Beacon",
    "Coral", "Delta",
)
_NAME_SECOND = (
    "Ridge", "River", "Peak", "Field", "Bridge", "Stone", "Point", "Gate", "Wave", "Forge",
    "Path", "Lake", "Crest", "Vale", "Haven", "Spring", "Grove", "Bay", "Hill", "Works",
)
_INDUSTRY_WORD = {
    "Software": ("Labs", "Systems", "Software"),
    "Healthcare": ("Health", "Clinics", "Care"),
    "Retail": ("Goods", "Stores", "Market"),
    "Financial Services": ("Capital", "Financial", "Partners"),
    "Manufacturing": ("Manufacturing", "Industries", "Fabrication"),
    "Education": ("Learning", "Academy", "Education"),
    "Media": ("Media", "Studios", "Publishing"),
}


@dataclass(frozen=True)
class SampleData:
    """In-memory rows of the four sample files, each a list of dicts keyed by the file's columns.

    Values are typed: dates are `datetime.date` (end_date may be None), money is a float in USD
    rounded to 2 decimals, everything else is str. Row order is the files' row order.
    """

    customers: list[dict]
    subscriptions: list[dict]
    orders: list[dict]
    marketing_spend: list[dict]


# --- date helpers ------------------------------------------------------------------------------


def month_end(year: int, month: int) -> date:
    """The last day of the given month (a `datetime.date`)."""
    return date(year, month, calendar.monthrange(year, month)[1])


def _months(start: date, end: date) -> list[tuple[int, int]]:
    """(year, month) pairs from start's month through end's month, inclusive."""
    out = []
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        out.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _next_month(y: int, m: int) -> tuple[int, int]:
    return (y + 1, 1) if m == 12 else (y, m + 1)


def _anniversary(start: date, year: int) -> date:
    """start's anniversary in `year` (Feb 29 falls back to Feb 28)."""
    day = min(start.day, calendar.monthrange(year, start.month)[1])
    return date(year, start.month, day)


def _random_date(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randint(0, (last - first).days))


# --- generation --------------------------------------------------------------------------------


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's Poisson sampler (fine for the small means used here)."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _pick(rng: random.Random, options: Sequence[str], weights: Sequence[float]) -> str:
    return rng.choices(options, weights=weights, k=1)[0]


def _price(rng: random.Random, plan: str, cycle: str) -> tuple[float, float]:
    """(list_price_usd per billing period, mrr_usd) for a new subscription."""
    if plan == "Enterprise":
        list_price = rng.choice(_ENTERPRISE_ANNUAL)
    elif cycle == "annual":
        list_price = _MONTHLY_PRICE[plan] * _ANNUAL_MULTIPLE
    else:
        list_price = _MONTHLY_PRICE[plan]
    mrr = round(list_price / 12, 2) if cycle == "annual" else list_price
    return list_price, mrr


def _new_subscription(
    rng: random.Random, customer: dict, plan: str, cycle: str, start: date,
    *, enterprise_floor: float | None = None, enterprise_cap: float | None = None,
) -> dict:
    if plan == "Enterprise":
        cycle = "annual"
    list_price, mrr = _price(rng, plan, cycle)
    if plan == "Enterprise":
        options = [p for p in _ENTERPRISE_ANNUAL
                   if (enterprise_floor is None or p > enterprise_floor)
                   and (enterprise_cap is None or p < enterprise_cap)]
        if options:
            # Upgrades land on the smaller contracts, contractions on the larger ones below cap.
            list_price = rng.choice(options[-2:] if enterprise_cap is not None else options[:2])
            mrr = round(list_price / 12, 2)
    return {
        "customer_id": customer["customer_id"], "plan": plan, "billing_cycle": cycle,
        "start_date": start, "end_date": None, "mrr_usd": mrr, "list_price_usd": list_price,
    }


def _simulate_lifecycle(rng: random.Random, customer: dict, first: dict) -> list[dict]:
    """The customer's subscriptions from `first` until churn or the cut-off.

    Events are drawn month by month from the month after the current subscription started
    (for the opening book, from January 2023). One event at most per month.
    """
    segment = customer["segment"]
    top = PLANS.index(_SEGMENT_TOP_PLAN[segment])
    subs = [first]
    cur = first
    y, m = _next_month(cur["start_date"].year, cur["start_date"].month)
    if (y, m) < (PERIOD_START.year, PERIOD_START.month):
        y, m = PERIOD_START.year, PERIOD_START.month
    while (y, m) <= (PERIOD_END.year, PERIOD_END.month):
        level = PLANS.index(cur["plan"])
        days = calendar.monthrange(y, m)[1]
        r = rng.random()
        if cur["billing_cycle"] == "monthly":
            churn_p, down_p = _CHURN_MONTHLY[segment], _DOWNGRADE_MONTHLY
            renewal = None
        else:
            renewal = (_anniversary(cur["start_date"], y)
                       if m == cur["start_date"].month and y > cur["start_date"].year else None)
            # A renewal on the period's first day would end the contract before the period,
            # so the opening book could not churn there (it is active on 2023-01-01 by design).
            churn_p = _CHURN_AT_RENEWAL[segment] if renewal and renewal > PERIOD_START else 0.0
            down_p = _DOWNGRADE_AT_RENEWAL if renewal else 0.0
        up_p = _UPGRADE_MONTHLY[segment] if level < top else 0.0
        if level == 0:
            down_p = 0.0

        if r < churn_p:
            cur["end_date"] = (renewal - timedelta(days=1) if renewal
                               else date(y, m, rng.randint(1, days)))
            return subs
        if r < churn_p + down_p:
            # Contraction: one plan lower (annual ones at renewal, monthly ones any day).
            if renewal:
                end = renewal - timedelta(days=1)
            else:
                end = date(y, m, rng.randint(1, days - 1))
            cur["end_date"] = end
            cap = cur["list_price_usd"] if cur["plan"] == "Enterprise" else None
            new_plan = PLANS[level - 1]
            if cur["plan"] == "Enterprise" and cap is not None and cap > _ENTERPRISE_ANNUAL[0]:
                new_plan = "Enterprise"  # smaller Enterprise contract
            cur = _new_subscription(rng, customer, new_plan, cur["billing_cycle"],
                                    end + timedelta(days=1), enterprise_cap=cap)
            subs.append(cur)
        elif r < churn_p + down_p + up_p:
            # Expansion: one plan higher, any day but the month's last (successor stays in month).
            end = date(y, m, rng.randint(1, days - 1))
            cur["end_date"] = end
            cur = _new_subscription(rng, customer, PLANS[level + 1], cur["billing_cycle"],
                                    end + timedelta(days=1))
            subs.append(cur)
        y, m = _next_month(y, m)
    return subs


def _company_name(rng: random.Random, industry: str, region: str, taken: set[str]) -> str:
    while True:
        name = (f"{rng.choice(_NAME_FIRST)} {rng.choice(_NAME_SECOND)} "
                f"{rng.choice(_INDUSTRY_WORD[industry])} {_LEGAL_SUFFIX[region]}")
        if name not in taken:
            taken.add(name)
            return name


def _draft_customer(rng: random.Random, channel: str, signup: date, taken: set[str]) -> dict:
    segment = _pick(rng, SEGMENTS, _CHANNEL_SEGMENT_WEIGHTS[channel])
    industry = rng.choice(INDUSTRIES)
    region = _pick(rng, REGIONS, _REGION_WEIGHTS)
    return {
        "customer_id": "", "company_name": _company_name(rng, industry, region, taken),
        "segment": segment, "industry": industry, "region": region,
        "acquisition_channel": channel, "signup_date": signup,
    }


def _money(x: float) -> float:
    return round(x, 2)


def _order(customer_id: str, month: date, revenue: float, cost_share: float, line: str) -> dict:
    revenue = _money(revenue)
    cost = _money(revenue * cost_share)
    return {
        "order_id": "", "customer_id": customer_id, "order_month": month,
        "revenue_usd": revenue, "cost_usd": cost, "profit_usd": _money(revenue - cost),
        "product_line": line,
    }


def generate(seed: int = SEED) -> SampleData:
    """Build the sample workspace in memory (deterministic for a given seed; ~50 ms).

    Returns a `SampleData` whose lists hold exactly the rows `write_sample_files` writes.
    """
    rng = random.Random(seed)
    taken: set[str] = set()
    period = _months(PERIOD_START, PERIOD_END)

    # Marketing spend per paid channel-month, and signups drawn around spend / CAC.
    spend_rows: list[dict] = []
    drafts: list[dict] = []
    for t, (y, m) in enumerate(period):
        first, last = date(y, m, 1), month_end(y, m)
        for channel in PAID_CHANNELS:
            budget = (_PAID_SHARE[channel] * _PAID_SIGNUPS_FIRST_MONTH * _TARGET_CAC[channel]
                      * _MONTHLY_BUDGET_GROWTH ** t * rng.uniform(0.9, 1.1))
            spend_rows.append({"month": first, "channel": channel, "spend_usd": _money(budget)})
            for _ in range(_poisson(rng, budget / _TARGET_CAC[channel])):
                drafts.append(_draft_customer(rng, channel, _random_date(rng, first, last), taken))
        for _ in range(_poisson(rng, 1.5 + 0.1 * t)):
            drafts.append(_draft_customer(rng, "Referral", _random_date(rng, first, last), taken))

    # Opening book: acquired in 2021-2022, skewed towards recent months, active on 2023-01-01.
    opening: list[dict] = []
    for _ in range(_OPENING_BOOK_SIZE):
        offset = int((PERIOD_START - date(2021, 1, 1)).days * math.sqrt(rng.random()))
        signup = date(2021, 1, 1) + timedelta(days=min(offset, 729))
        channel = _pick(rng, CHANNELS, (0.28, 0.16, 0.2, 0.14, 0.1, 0.12))
        opening.append(_draft_customer(rng, channel, signup, taken))

    customers = sorted(opening + drafts, key=lambda c: c["signup_date"])  # stable
    for i, c in enumerate(customers, start=1):
        c["customer_id"] = f"C{i:04d}"

    # Subscriptions.
    subscriptions: list[dict] = []
    for c in customers:
        seg = c["segment"]
        plan = _pick(rng, PLANS, _SEGMENT_PLAN_WEIGHTS[seg])
        cycle = "annual" if rng.random() < _SEGMENT_ANNUAL_SHARE[seg] else "monthly"
        first_sub = _new_subscription(rng, c, plan, cycle, c["signup_date"])
        subscriptions.extend(_simulate_lifecycle(rng, c, first_sub))
    subscriptions.sort(key=lambda s: (s["start_date"], s["customer_id"]))
    subscriptions = [
        {"subscription_id": f"S{i:05d}", **s} for i, s in enumerate(subscriptions, start=1)
    ]

    # Orders: recognised revenue per customer-month and product line.
    subs_by_customer: dict[str, list[dict]] = {}
    for s in subscriptions:
        subs_by_customer.setdefault(s["customer_id"], []).append(s)
    addon_rate = {c["customer_id"]: (rng.uniform(0.04, 0.15) if rng.random() < 0.3 else 0.0)
                  for c in customers}
    orders: list[dict] = []
    for y, m in period:
        first, last = date(y, m, 1), month_end(y, m)
        days = last.day
        for c in customers:
            cid = c["customer_id"]
            sub_revenue, month_end_sub = 0.0, None
            for s in subs_by_customer[cid]:
                lo = max(s["start_date"], first)
                hi = min(s["end_date"] or PERIOD_END, last)
                if lo <= hi:
                    sub_revenue += s["mrr_usd"] * ((hi - lo).days + 1) / days
                    month_end_sub = s
            if sub_revenue > 0:
                orders.append(_order(cid, first, sub_revenue, rng.uniform(0.16, 0.24),
                                     "Platform Subscription"))
            if (addon_rate[cid] and month_end_sub is not None
                    and month_end_sub["plan"] != "Starter"):
                usage = month_end_sub["mrr_usd"] * addon_rate[cid] * rng.uniform(0.7, 1.3)
                orders.append(_order(cid, first, usage, rng.uniform(0.3, 0.4), "Usage Add-ons"))
            if first <= c["signup_date"] <= last:
                take, low, high = {"SMB": (0.05, 300, 900), "Mid-Market": (0.5, 1500, 4000),
                                   "Enterprise": (0.85, 5000, 20000)}[c["segment"]]
                if rng.random() < take:
                    fee = rng.randint(low // 100, high // 100) * 100.0
                    orders.append(_order(cid, first, fee, rng.uniform(0.65, 0.85),
                                         "Professional Services"))
    for i, o in enumerate(orders, start=1):
        o["order_id"] = f"O{i:06d}"

    return SampleData(customers, subscriptions, orders, spend_rows)


# --- files -------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[col]) for col in columns])


def write_sample_files(dest_dir: Path, *, seed: int = SEED) -> list[Path]:
    """Write the four sample CSV files into dest_dir (created if missing; files overwritten).

    Returns [customers.csv, subscriptions.csv, orders.csv, marketing_spend.csv] paths, in that
    order. Byte-identical output on every call for the same seed. See the module docstring for
    the columns and units (money in USD, 2 decimals; ISO dates).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    data = generate(seed)
    tables = (
        (CUSTOMER_COLUMNS, data.customers),
        (SUBSCRIPTION_COLUMNS, data.subscriptions),
        (ORDER_COLUMNS, data.orders),
        (MARKETING_SPEND_COLUMNS, data.marketing_spend),
    )
    paths = []
    for name, (columns, rows) in zip(FILE_NAMES, tables, strict=True):
        path = dest_dir / name
        _write_csv(path, columns, rows)
        paths.append(path)
    return paths


def load_subscriptions(path: Path) -> list[dict]:
    """Read a subscriptions.csv written by `write_sample_files` back into typed rows.

    Each row is a dict with SUBSCRIPTION_COLUMNS keys: dates as `datetime.date` (end_date None
    when empty), mrr_usd and list_price_usd as float (USD), the rest str.
    """
    rows = []
    with Path(path).open(encoding="utf-8", newline="") as fh:
        for raw in csv.DictReader(fh):
            rows.append({
                "subscription_id": raw["subscription_id"],
                "customer_id": raw["customer_id"],
                "plan": raw["plan"],
                "billing_cycle": raw["billing_cycle"],
                "start_date": date.fromisoformat(raw["start_date"]),
                "end_date": date.fromisoformat(raw["end_date"]) if raw["end_date"] else None,
                "mrr_usd": float(raw["mrr_usd"]),
                "list_price_usd": float(raw["list_price_usd"]),
            })
    return rows


# --- reference figures (pure Python, for checking the agent's SQL) -----------------------------


def is_active_on(subscription: dict, day: date) -> bool:
    """Whether a subscription row serves `day` (start_date and end_date are both inclusive)."""
    end = subscription["end_date"]
    return subscription["start_date"] <= day and (end is None or end >= day)


def reference_mrr(subscriptions: Iterable[dict], year: int, month: int) -> float:
    """MRR in USD at the end of (year, month), per `MRR_DEFINITION`, rounded to cents.

    `subscriptions` are rows as in `generate().subscriptions` or `load_subscriptions(path)`
    (needs start_date, end_date as date/None and mrr_usd). Summed in integer cents, so the result
    is exact to the cent.
    """
    day = month_end(year, month)
    cents = sum(round(s["mrr_usd"] * 100) for s in subscriptions if is_active_on(s, day))
    return cents / 100


def reference_active_customers(subscriptions: Iterable[dict], year: int, month: int) -> int:
    """Number of distinct customer_ids with a subscription active on the last day of the month
    (same activity rule as `MRR_DEFINITION`)."""
    day = month_end(year, month)
    return len({s["customer_id"] for s in subscriptions if is_active_on(s, day)})
