"""Key figures on the chat page (AppTest): each shows where it was checked, ✓ handle · row · column
(click: the cell highlighted in its result), or "not traced" in red; the details line shows tokens."""

from __future__ import annotations

import re

from agent_script import output_call, result_content, scripted, turn_returns
from pydantic_ai.messages import ModelResponse, ToolCallPart
from test_ui import app, create_workspace, settle, texts

from cfo_desk.agent.core import use_model

SALES = ("month,region,revenue\n" + "".join(f"2024-{m:02d}-01,{r},{100 * m + i}.50\n" for m in range(1, 7) for i, r in enumerate(["APAC", "EMEA"]))).encode()
SQL = "SELECT month, region, revenue FROM sales ORDER BY month, region"


def _plan(messages, info):
    returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "Revenue by month", "sql": SQL})])
    rows = result_content(returns[0])["rows"]
    june_emea = rows[11][2]  # 601.50: row 12 of q1
    figures = [
        {"label": "Revenue, EMEA June 2024", "value": june_emea, "unit": "USD", "query": "q1", "column": "revenue"},
        {"label": "Revenue, all regions", "value": 99999, "unit": "USD", "query": "q1"},  # in no cell
    ]
    return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "June EMEA revenue was 601.50 USD (q1).", "key_figures": figures})])


def test_traced_and_untraced_figures_and_the_source_cell():
    at = app()
    create_workspace(at, "Figures")
    at.sidebar.file_uploader[0].set_value(("sales.csv", SALES, "text/csv")).run()
    use_model(scripted(_plan))
    at.button(key="new_thread").click().run()
    at.chat_input[0].set_value("June revenue?").run()
    settle(at)
    assert not at.exception, at.exception

    (trace,) = [b for b in at.button if b.key and b.key.startswith("trace_")]
    assert trace.label == "✓ q1 · row 12 · revenue"
    shown = texts(at)
    assert "not traced" in shown and "99,999" in shown and "matches no cell of q1" in shown
    assert "tokens in" in shown  # the details line under the answer

    trace.click().run()
    assert not at.exception, at.exception
    assert "comes from **q1** · row 12 · column revenue" in texts(at)
    source, result = at.dataframe  # AppTest gives dataframes no keys: the source window is drawn above the result
    frame = source.value
    assert result.value.index[0] == 0
    assert list(frame.index) == list(range(9, 13))  # rows 9-12: three above the cell, none below the last row
    assert frame.loc[12, "revenue"] == 601.5
    styles = source.proto.arrow_data.styler.styles  # only the source cell is highlighted: window row 4 (row 12), column revenue
    assert re.fullmatch(r"#T_\w+_row3_col2 \{ background-color: #fde68a; [^}]*\}", styles.strip()), styles

    trace.click().run()  # a second click closes it
    assert "comes from **q1**" not in texts(at)


def test_an_answered_clarification_is_saved_to_the_glossary_in_one_click():
    from agent_script import sql_script

    from cfo_desk.services import glossary as glossary_svc
    from cfo_desk.services.session import open_session

    def ask_back(messages, info):
        return ModelResponse(parts=[output_call(info, "Clarification", {
            "question": "Who counts as an active customer?", "options": ["Paid in the month", "Active subscription at month end"],
            "term": "active customer"})])

    use_model(scripted(ask_back))
    at = app()
    create_workspace(at, "G")
    at.chat_input[0].set_value("How many active customers?").run()
    settle(at)
    seen: list = []
    use_model(sql_script([], {"answer_markdown": "Counted.", "glossary_terms": ["active customer"]}, seen=seen))
    [b for b in at.button if b.label == "Paid in the month"][0].click().run()
    settle(at)
    assert not at.exception, at.exception
    (save,) = [b for b in at.button if b.key and b.key.startswith("glossary_")]
    assert save.label.replace("\\", "") == "Save to glossary: active customer = Paid in the month"  # label text is escaped
    save.click().run()
    assert not at.exception, at.exception
    assert "Saved “active customer” to the glossary (version 1)" in "".join(m.value for m in at.success)
    assert not [b for b in at.button if b.key and b.key.startswith("glossary_")]  # saved: a caption says so instead
    assert "In the workspace glossary as active customer (version 1)." in texts(at)
    assert "Definitions from the workspace glossary" not in texts(at)  # that answer ran before the entry existed
    with open_session() as session:
        (entry,) = glossary_svc.glossary_history(session=session, workspace_id=at.session_state["ws_id"])
    assert (entry.term, entry.definition, entry.source) == ("active customer", "Paid in the month", "clarification")
