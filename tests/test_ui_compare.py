"""The Compare page (AppTest): a thread and its fork side by side from where they diverge, the key
figures that differ highlighted."""

from __future__ import annotations

from agent_script import output_call, result_content, scripted, turn_returns
from pydantic_ai.messages import ModelResponse, ToolCallPart
from test_ui import app, create_workspace, settle, texts

from cfo_desk.agent.core import use_model


def _model(value: float):
    def plan(messages, info):
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        if not returns:
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "MRR", "sql": f"SELECT {value} AS mrr, 40 AS customers"})])
        mrr, customers = result_content(returns[0])["rows"][0]
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {
            "answer_markdown": f"MRR is {mrr}.",
            "key_figures": [{"label": "MRR", "value": mrr, "unit": "USD", "query": result_content(returns[0])["result"]},
                            {"label": "Customers", "value": customers, "unit": "customers", "query": result_content(returns[0])["result"]}]})])

    return scripted(plan)


def test_compare_a_thread_and_its_fork():
    use_model(_model(1000.0))
    at = app()
    create_workspace(at, "Compare")
    at.chat_input[0].set_value("Opening question").run()
    settle(at)
    at.chat_input[0].set_value("MRR, gross?").run()
    settle(at)
    source = at.session_state["thread_id"]
    opening_answer = [b for b in at.button if b.key and b.key.startswith("fork_")][1]  # fork after the first answer
    opening_answer.click().run()
    use_model(_model(1250.0))
    at.chat_input[0].set_value("MRR, net of discounts?").run()
    settle(at)
    fork = at.session_state["thread_id"]

    at.button(key=f"compare_thread_{fork}").click().run()  # from the thread menu
    assert not at.exception, at.exception
    assert at.selectbox(key=next(s.key for s in at.selectbox if s.key.startswith("cmp_left_"))).value == fork
    assert at.selectbox(key=next(s.key for s in at.selectbox if s.key.startswith("cmp_right_"))).value == source  # its source
    shown = texts(at)
    assert "They share their first 2 message(s)" in shown and "1 key figure(s) differ" in shown
    assert "MRR, net of discounts?" in shown and "MRR, gross?" in shown and ":material/person: Opening question" not in shown  # shared: counted, not drawn
    (table,) = at.dataframe
    frame = table.value
    assert frame["Key figure"].tolist() == ["MRR", "Customers"]
    assert frame.loc[0, "Left"] != frame.loc[0, "Right"] and frame.loc[0, "Change"] == "-20.0%"
    styles = table.proto.arrow_data.styler.styles
    assert "row0_col0" in styles and "row1_col0" not in styles  # only the MRR row is highlighted


def test_compare_two_branches_of_one_thread():
    use_model(_model(1000.0))
    at = app()
    create_workspace(at, "Branches")
    at.chat_input[0].set_value("MRR?").run()
    settle(at)
    use_model(_model(900.0))
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("regen_"))).click().run()  # a second branch
    settle(at)
    at.switch_page("views/compare.py").run()
    at.segmented_control(key=next(s.key for s in at.segmented_control)).set_value("Two branches of a thread").run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "They share their first 1 message(s)" in shown and "1 key figure(s) differ" in shown
    assert "MRR is 900.0." in shown and "MRR is 1000.0." in shown
