"""The CFO agent on real DuckDB over the ingested sample files; models are scripted, never real."""

from __future__ import annotations

import pytest
from agent_script import result_content, scripted, sql_script, turn_returns
from pydantic_ai.messages import ModelResponse, ToolCallPart

from cfo_desk.analytics.sample_data import generate, reference_active_customers, reference_mrr
from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services import turns
from cfo_desk.services.datasets import list_datasets
from cfo_desk.services.turns import Progress

MRR_SQL = """
SELECT round(sum(mrr_usd), 2) AS mrr_usd, count(DISTINCT customer_id) AS active_customers
FROM subscriptions
WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')
"""


def mrr_answer(returns):
    value, customers = result_content(returns[-1])["rows"][0]
    return {
        "answer_markdown": f"MRR in December 2024 was **${value:,.2f}** across {customers} active customers (q1).",
        "key_figures": [{"label": "MRR, December 2024", "value": value, "unit": "USD", "period": "2024-12", "query": "q1"}],
        "queries": ["q1"],
    }


def test_mrr_december_2024_is_right_and_a_bad_query_is_retried(session, sample):
    ws, thread = sample
    steps: list[Progress] = []
    bad = "SELECT sum(mrr) FROM subscriptions"  # no such column: DuckDB's binder error goes back to the model
    reply = turns.ask(
        session=session, thread_id=thread.id, content="What was MRR in December 2024?",
        model=sql_script([bad, MRR_SQL], mrr_answer), on_progress=steps.append,
    )
    subs = generate().subscriptions
    expected = reference_mrr(subs, 2024, 12)
    assert reply.status == "ok"
    assert f"${expected:,.2f}" in reply.content

    (art,) = artifacts_svc.artifacts_by_message(session=session, message_ids=[reply.id])[reply.id]
    frame = artifacts_svc.result_frame(session=session, artifact=art)
    assert frame["mrr_usd"].iloc[0] == pytest.approx(expected, abs=0.005)
    assert frame["active_customers"].iloc[0] == reference_active_customers(subs, 2024, 12)
    assert art.handle == "q1" and art.sql == MRR_SQL and art.title == "Step 2"  # the failed query got no handle
    (read,) = art.datasets_read
    subs_ds = next(d for d in list_datasets(session=session, workspace_id=ws.id) if d.table_name == "subscriptions")
    assert (read["table"], read["sha256"], read["source"]) == ("subscriptions", subs_ds.sha256, "subscriptions.csv")

    # Progress streamed: the bad call and its error, then the good call and its row count.
    calls = [p for p in steps if p.kind == "tool_call" and p.tool == "run_sql"]
    results = [p for p in steps if p.kind == "tool_result" and p.tool == "run_sql"]
    assert [c.sql for c in calls] == [bad, MRR_SQL]
    assert "mrr" in results[0].error and results[1].row_count == 1


def test_instructions_list_the_tables_and_conventions(session, sample):
    _, thread = sample
    seen_instructions: list[str] = []

    def plan(messages, info):
        seen_instructions.append(info.instructions or "")
        from agent_script import output_call

        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "ok"})])

    turns.ask(session=session, thread_id=thread.id, content="hi", model=scripted(plan))
    text = seen_instructions[0]
    for table in ("customers", "subscriptions", "orders", "marketing_spend"):
        assert f"- {table}:" in text
    assert "mrr_usd DECIMAL(18,2)" in text and "ask a clarifying question" in text


def test_list_and_profile_tools_describe_the_data(session, sample):
    _, thread = sample

    def plan(messages, info):
        from agent_script import output_call

        returns = turn_returns(messages)
        if not returns:
            return ModelResponse(parts=[ToolCallPart("list_tables", {})])
        if len(returns) == 1:
            return ModelResponse(parts=[ToolCallPart("profile_table", {"table": "customers"})])
        if len(returns) == 2:
            return ModelResponse(parts=[ToolCallPart("profile_table", {"table": "nope"})])
        tables, profile, unknown = (r.content for r in returns)
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": repr((tables, profile, unknown))})])

    reply = turns.ask(session=session, thread_id=thread.id, content="what data?", model=scripted(plan))
    content = reply.content
    assert "'table': 'customers'" in content and "'rows': 597" in content
    assert "'column': 'segment'" in content and "'distinct': 3" in content
    assert "Unknown table 'nope'" in content


def _collecting_answer():
    """(the tool returns the model saw, an answer builder that records them and says "ok")."""
    seen_returns: list = []

    def answer(returns):
        seen_returns.extend(returns)
        return {"answer_markdown": "ok"}

    return seen_returns, answer


def test_sandbox_refusal_goes_back_to_the_model(session, sample):
    _, thread = sample
    seen_returns, answer = _collecting_answer()

    reply = turns.ask(
        session=session, thread_id=thread.id, content="export it",
        model=sql_script(["COPY customers TO '/tmp/leak.csv'", "SELECT count(*) AS n FROM customers"], answer),
    )
    assert reply.status == "ok"
    assert seen_returns[0].outcome == "retried" and "Only read-only SELECT" in str(seen_returns[0].content)
    assert result_content(seen_returns[1])["rows"] == [[597]]


def test_a_revealing_function_is_refused_back_to_the_model_with_its_name(session, sample):
    _, thread = sample
    seen_returns, answer = _collecting_answer()

    reply = turns.ask(
        session=session, thread_id=thread.id, content="where is the data?",
        model=sql_script(["SELECT path FROM duckdb_databases()", "SELECT current_setting('secret_directory') AS s",
                          "SELECT table_name FROM information_schema.tables ORDER BY 1"], answer),
    )
    assert reply.status == "ok"
    first, second, third = seen_returns
    assert first.outcome == second.outcome == "retried"
    assert "duckdb_databases() is not allowed: it reveals file paths" in str(first.content)
    assert "current_setting() is not allowed" in str(second.content)
    assert "/" not in str(first.content) + str(second.content)  # no path reaches the model
    assert [r[0] for r in result_content(third)["rows"]] == ["customers", "marketing_spend", "orders", "subscriptions"]


def test_rows_shown_to_the_model_are_capped(session, sample, monkeypatch):
    _, thread = sample
    seen = []
    turns.ask(
        session=session, thread_id=thread.id, content="all orders",
        model=sql_script(["SELECT * FROM orders"], lambda r: seen.append(result_content(r[0])) or {"answer_markdown": "ok"}),
    )
    (content,) = seen
    assert content["row_count"] == 8498 and content["rows_shown"] == 200 and len(content["rows"]) == 200
    assert "Only the first 200 of 8,498 rows" in content["notes"][-1]


def test_retry_budget_exhausted_gives_a_readable_failure(session, sample):
    _, thread = sample
    reply = turns.ask(session=session, thread_id=thread.id, content="x", model=sql_script(["SELECT nope FROM customers"] * 10))
    assert reply.status == "failed"
    assert "did not produce a usable answer" in reply.error and "Traceback" not in reply.error


def test_usage_limit_stops_a_looping_model(session, sample, monkeypatch):
    from cfo_desk.config import get_settings

    _, thread = sample
    monkeypatch.setenv("CFO_DESK_REQUEST_LIMIT", "3")
    get_settings.cache_clear()
    reply = turns.ask(session=session, thread_id=thread.id, content="loop", model=sql_script(["SELECT 1 AS a"] * 10))
    assert reply.status == "failed" and "per-turn limit" in reply.error


def test_model_problem_is_one_sentence(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    from cfo_desk.agent.core import model_problem

    assert "set CFO_DESK_MODEL" in model_problem(None)
    msg = model_problem("openai-chat:gpt-4.1")
    assert msg.count(". ") == 0 and "OPENAI_API_KEY" in msg
    assert "Unknown model" in model_problem("gpt-4.1")


def test_provider_errors_are_readable(session, sample, monkeypatch):
    from stub_openai import StubOpenAIServer

    from pydantic_ai import models

    _, thread = sample
    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)  # only 127.0.0.1 is reached
    with StubOpenAIServer() as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "bad-key")
        bad_key = turns.ask(session=session, thread_id=thread.id, content="q", model="openai-chat:stub-model")
        port = stub.port
    assert bad_key.status == "failed" and "rejected the API key" in bad_key.error

    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")  # server now gone
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    down = turns.answer(session=session, thread_id=thread.id, user_message_id=bad_key.parent_id, model="openai-chat:stub-model")
    assert down.status == "failed" and "Could not reach the model server" in down.error


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "rejected the API key"), (429, "rate-limiting"), (500, "HTTP 500 (upstream exploded)"), (404, "HTTP 404")],
)
def test_provider_http_errors_read_as_sentences(status, words):
    from pydantic_ai.exceptions import ModelHTTPError

    from cfo_desk.agent.runner import readable_error

    text = readable_error(ModelHTTPError(status_code=status, model_name="m", body={"message": "upstream exploded"}))
    assert words in text and "status_code:" not in text and text.endswith(".")
