"""Tie-out: a key figure must equal a cell of the result it cites (agent/tieout.py and the agent's
output validator), on real DuckDB results of the sample workspace; models are scripted."""

from __future__ import annotations

import pytest
from agent_script import output_call, result_content, retried_texts, scripted, turn_returns
from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart

from cfo_desk.agent.core import OUTPUT_RETRIES
from cfo_desk.agent.outputs import FinalAnswer, KeyFigure
from cfo_desk.agent.tieout import figure_matches, tie_out
from cfo_desk.analytics.sample_data import generate, reference_active_customers, reference_mrr
from cfo_desk.services import turns

MRR_SQL = """
SELECT round(sum(mrr_usd), 2) AS mrr_usd, count(DISTINCT customer_id) AS active_customers
FROM subscriptions
WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')
"""
SEGMENT_SQL = """
SELECT c.segment, round(sum(s.mrr_usd), 2) AS mrr_usd
FROM subscriptions s JOIN customers c USING (customer_id)
WHERE s.start_date <= DATE '2024-12-31' AND (s.end_date IS NULL OR s.end_date >= DATE '2024-12-31')
GROUP BY c.segment ORDER BY c.segment
"""


@pytest.mark.parametrize(
    ("value", "cell", "unit", "ok"),
    [
        (312109.5, 312109.5, "USD", True),
        (312110, 312109.5, "USD", True),  # rounded to dollars
        (312100, 312109.5, "USD", True),  # to hundreds: still 4 significant digits
        (312000, 312109.5, "USD", True),
        (310000, 312109.5, "USD", False),  # 2 significant digits: too coarse to tie out
        (312.1, 312109.5, "USD k", True),  # "$312.1k"
        (312.1, 312109.5, "kUSD", True),
        (0.31, 312109.5, "USD millions", False),  # 0.31m keeps 2 digits
        (0.312, 312109.5, "USD m", True),
        (312.1, 312109.5, "USD", False),  # no scale in the unit: no match
        (401, 461, "customers", False),
        (461, 461, "customers", True),
        (12.5, 0.125, "%", True),  # ratio in the cell, percent in the figure
        (12.5, 12.5, "%", True),
        (12.3, 0.1254, "%", False),
        (-1234.57, -1234.5678, "USD", True),
        (0, 0.3, "USD", False),
    ],
)
def test_figure_matches_after_its_rounding(value, cell, unit, ok):
    assert figure_matches(value, cell, unit) is ok


def _figures_model(figures_per_try, seen):
    """run_sql(MRR_SQL), then answer with figures_per_try[i] on the i-th output attempt."""

    def plan(messages, info):
        seen.append(list(messages))
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        if not returns:
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "MRR and active customers", "sql": MRR_SQL})])
        tried = [r for m in messages if isinstance(m, ModelRequest) for r in m.parts if (getattr(r, "tool_name", None) or "").startswith("final_result")]
        figures = figures_per_try[min(len(tried), len(figures_per_try) - 1)]
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "Answer.", "key_figures": figures})])

    return scripted(plan)


def test_a_figure_that_is_not_in_its_result_is_sent_back_and_fixed(session, sample):
    """The scripted model says 401 active customers, q1 says 461: it is told so and answers 461."""
    _, thread = sample
    subs = generate().subscriptions
    right = reference_active_customers(subs, 2024, 12)
    wrong = right - 60
    seen: list = []
    figures = [
        [{"label": "Active customers", "value": wrong, "unit": "customers", "query": "q1"}],
        [{"label": "Active customers", "value": right, "unit": "customers", "query": "q1"}],
    ]
    reply = turns.ask(session=session, thread_id=thread.id, content="How many active customers?", model=_figures_model(figures, seen))
    assert reply.status == "ok"
    (fig,) = reply.output["key_figures"]
    assert fig["value"] == right
    assert fig["trace"] == {"status": "traced", "handle": "q1", "row": 0, "column": "active_customers", "cell": float(right), "reason": None}
    told = " ".join(retried_texts(seen[-1]))
    assert f"'Active customers' ({wrong} customers)" in told and f"active_customers={right}" in told, told


def test_a_figure_still_wrong_when_retries_run_out_is_kept_as_not_traced(session, sample):
    _, thread = sample
    seen: list = []
    mrr = reference_mrr(generate().subscriptions, 2024, 12)
    figures = [[
        {"label": "MRR", "value": mrr, "unit": "USD", "query": "q1", "column": "mrr_usd"},
        {"label": "Active customers", "value": 401, "unit": "customers", "query": "q1"},
    ]]
    reply = turns.ask(session=session, thread_id=thread.id, content="MRR?", model=_figures_model(figures, seen))
    assert reply.status == "ok"  # the answer is kept
    good, bad = reply.output["key_figures"]
    assert good["trace"]["status"] == "traced" and good["trace"]["column"] == "mrr_usd"
    assert bad["trace"]["status"] == "not_traced" and "401" in bad["trace"]["reason"]
    assert len(retried_texts(seen[-1])) == OUTPUT_RETRIES  # sent back as often as the budget allows, then kept


def test_a_figure_citing_an_earlier_turns_result_ties_out(session, sample):
    _, thread = sample
    mrr = reference_mrr(generate().subscriptions, 2024, 12)

    def first(messages, info):
        if not [r for r in turn_returns(messages) if r.tool_name == "run_sql"]:
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "MRR", "sql": MRR_SQL})])
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "See q1."})])

    def second(messages, info):  # no query this turn: cites q1 of the turn before
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {
            "answer_markdown": "ARR is 12 × MRR.", "key_figures": [{"label": "MRR", "value": round(mrr), "unit": "USD", "query": "q1"}]})])

    turns.ask(session=session, thread_id=thread.id, content="MRR?", model=scripted(first))
    reply = turns.ask(session=session, thread_id=thread.id, content="Round it", model=scripted(second))
    assert reply.output["key_figures"][0]["trace"]["status"] == "traced"
    assert reply.output["key_figures"][0]["trace"]["handle"] == "q1"


def test_a_breakdown_that_does_not_sum_to_its_total_is_flagged(session, sample):
    _, thread = sample

    def plan(messages, info):
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        if len(returns) < 2:
            sql = [MRR_SQL, SEGMENT_SQL][len(returns)]
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "step", "sql": sql})])
        total = result_content(returns[0])["rows"][0][0]
        parts = result_content(returns[1])["rows"]
        figures = [{"label": "MRR", "value": total, "unit": "USD", "query": "q1"}]
        figures += [{"label": f"MRR {seg}", "value": v, "unit": "USD", "query": "q2", "part_of": "MRR"} for seg, v in parts[:2]]  # one segment left out
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "By segment.", "key_figures": figures})])

    reply = turns.ask(session=session, thread_id=thread.id, content="MRR by segment", model=scripted(plan))
    assert all(f["trace"]["status"] == "traced" for f in reply.output["key_figures"])
    (note,) = reply.output["tie_out_notes"]
    assert "The parts of 'MRR'" in note and "don't sum" in note


def test_tie_out_reads_a_result_file(tmp_path):
    import duckdb

    path = tmp_path / "q1.parquet"
    duckdb.connect().execute(f"COPY (SELECT 'SMB' AS segment, 1234.5::DECIMAL(18,2) AS mrr, 7 AS n) TO '{path}'")
    answer = FinalAnswer(answer_markdown="x", key_figures=[
        KeyFigure(label="MRR", value=1234.5, unit="USD", query="q1"),
        KeyFigure(label="N", value=7, unit="customers", query="q1", column="nope"),
        KeyFigure(label="M", value=1, unit="USD", query="q2"),
        KeyFigure(label="P", value=1, unit="USD"),
    ])
    traces = tie_out(answer, {"q1": path}).traces
    assert (traces[0].status, traces[0].column, traces[0].row) == ("traced", "mrr", 0)
    assert "does not have (columns: segment, mrr, n)" in traces[1].reason
    assert "'q2', which is not a result" in traces[2].reason
    assert "cites no result" in traces[3].reason


def test_a_join_that_multiplies_rows_is_flagged_to_the_model(session, sample):
    _, thread = sample
    fanned = "SELECT s.customer_id, o.revenue_usd FROM subscriptions s JOIN orders o USING (customer_id)"
    seen: list = []

    def plan(messages, info):
        seen.append(list(messages))
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        if len(returns) < 2:
            sql = [fanned, "SELECT customer_id, segment FROM customers JOIN subscriptions USING (customer_id) LIMIT 5"][len(returns)]
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "join", "sql": sql})])
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "ok"})])

    turns.ask(session=session, thread_id=thread.id, content="Revenue per subscription", model=scripted(plan))
    fan, fine = [result_content(r) for r in turn_returns(seen[-1]) if r.tool_name == "run_sql"]
    assert any("Check the joins" in n and "more than the largest table it read (orders" in n for n in fan["notes"]), fan["notes"]
    assert not any("Check the joins" in n for n in fine["notes"])
