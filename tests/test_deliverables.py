"""Charts and workbooks made by the agent (scripted with FunctionModel) on the sample workspace:
kept as artifacts, refused specs sent back to the model, the workbook recalculated by LibreOffice
tying out to DuckDB, and both drawn on the chat and Artifacts pages (AppTest)."""

from __future__ import annotations

import os
import shutil
import subprocess

import openpyxl
import pytest
from agent_script import output_call, retried_texts, scripted, turn_returns
from pydantic_ai.messages import ModelResponse, ToolCallPart
from test_ui import app, settle, texts
from test_workbook import BRIDGE_SQL

from cfo_desk.agent.core import use_model
from cfo_desk.analytics.sample_data import generate, reference_mrr
from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services import threads as threads_svc, turns
from cfo_desk.storage.files import workspace_dir

SOFFICE = shutil.which("soffice")

CHART = {"result": "q1", "mark": "line", "x": "month", "y": "ending_mrr", "title": "Ending MRR 2024", "x_format": "month", "y_format": "currency"}


def bridge_workbook(*, hyperlink: bool = False) -> dict:
    """The 2024 MRR bridge as the model would ask for it: q1 as a data sheet, and a model sheet
    where start = previous end, end = start + new + expansion − contraction − churn, per month."""
    cells = [{"ref": f"{c}1", "value": v, "kind": "header"} for c, v in zip("ABCDEFG", ["Month", "Start", "New", "Expansion", "Contraction", "Churn", "End"])]
    for i in range(12):
        r = i + 2
        cells.append({"ref": f"A{r}", "formula": f"='MRR data'!A{r}", "number_format": "month"})
        cells.append({"ref": f"B{r}", "formula": "='MRR data'!B2" if i == 0 else f"=G{r - 1}", "number_format": "currency"})
        cells += [{"ref": f"{c}{r}", "formula": f"='MRR data'!{c}{r}", "number_format": "currency"} for c in "CDEF"]
        cells.append({"ref": f"G{r}", "formula": f"=B{r}+C{r}+D{r}-E{r}-F{r}", "number_format": "currency"})
    if hyperlink:
        cells.append({"ref": "A20", "formula": '=HYPERLINK("http://example.com/x","click")'})
    return {
        "title": "MRR bridge 2024",
        "model_sheets": [{"name": "Bridge", "cells": cells}],
        "data_sheets": [{"name": "MRR data", "result": "q1"}],
    }


def deliverables_model(seen: list, *, bad_first: bool = False):
    """run_sql(bridge), make_chart, build_workbook, then the answer. With `bad_first`, the first
    chart names a column q1 lacks and the first workbook holds a HYPERLINK: both come back."""

    def plan(messages, info):
        seen.append(list(messages))
        returns = turn_returns(messages)
        done = {r.tool_name: r for r in returns if getattr(r, "outcome", "success") == "success"}
        tried = [r.tool_name for r in returns]
        if "run_sql" not in done:
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": "2024 MRR bridge by month", "sql": BRIDGE_SQL})])
        if "make_chart" not in done:
            spec = dict(CHART, y="ending_arr") if bad_first and "make_chart" not in tried else CHART
            return ModelResponse(parts=[ToolCallPart("make_chart", {"spec": spec})])
        if "build_workbook" not in done:
            spec = bridge_workbook(hyperlink=bad_first and "build_workbook" not in tried)
            return ModelResponse(parts=[ToolCallPart("build_workbook", {"spec": spec})])
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": "The bridge is in w1, charted in c1.", "queries": ["q1"]})])

    return scripted(plan)


def test_the_agent_builds_a_chart_and_a_workbook_that_recalculates_to_the_sql_figures(session, sample, tmp_path):
    ws, thread = sample
    seen: list = []
    reply = turns.ask(session=session, thread_id=thread.id, content="Build a 2024 MRR bridge workbook with a chart", model=deliverables_model(seen, bad_first=True))
    assert reply.status == "ok", reply.error
    told = " ".join(retried_texts(seen[-1]))
    assert "ending_arr" in told and "ending_mrr" in told  # the chart's unknown field, with the columns it could use
    assert "HYPERLINK" in told and "refused" in told  # the formula refused, naming what

    arts = artifacts_svc.artifacts_by_message(session=session, message_ids=[reply.id])[reply.id]
    by_kind = {a.kind: a for a in arts}
    assert set(by_kind) == {"query_result", "chart", "workbook"}
    chart, book = by_kind["chart"], by_kind["workbook"]
    assert (chart.handle, book.handle) == ("c1", "w1")  # refused specs used no handle
    assert chart.file_path == by_kind["query_result"].file_path and chart.sql == BRIDGE_SQL
    assert chart.spec["y"] == "ending_mrr" and chart.spec["currency"] == "USD"
    assert {d["table"] for d in book.datasets_read} == {"subscriptions"} and book.spec["title"] == "MRR bridge 2024"

    # Re-drawing the chart reads the kept result, not DuckDB.
    drawn, _ = artifacts_svc.chart_of(session=session, artifact=chart)
    assert drawn.to_dict()["title"]["text"] == "Ending MRR 2024"

    if SOFFICE is None:
        if os.environ.get("CI"):
            pytest.fail("soffice (LibreOffice) is missing; CI installs libreoffice-calc-nogui (.ci/run)")
        pytest.skip("soffice (LibreOffice) is not installed")
    xlsx = workspace_dir(ws.key) / book.file_path
    out = tmp_path / "recalc"
    proc = subprocess.run(
        [SOFFICE, "--headless", "--calc", "--convert-to", "xlsx", "--outdir", str(out), str(xlsx)],
        env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    sheet = openpyxl.load_workbook(out / xlsx.name, data_only=True)["Bridge"]
    december = reference_mrr(generate().subscriptions, 2024, 12)
    assert sheet["G13"].value == pytest.approx(december, abs=0.005)  # $312,109.50
    for r in range(2, 14):  # each month ties out: start + movements = end
        start, new, exp, con, churn, end = (sheet[f"{c}{r}"].value for c in "BCDEFG")
        assert start + new + exp - con - churn == pytest.approx(end, abs=0.005)
        if r > 2:
            assert start == pytest.approx(sheet[f"G{r - 1}"].value, abs=0.005)


def test_a_fork_shares_the_workbook_and_its_new_ones_stay_in_the_fork(session, sample):
    ws, thread = sample
    reply = turns.ask(session=session, thread_id=thread.id, content="Bridge", model=deliverables_model([]))
    fork = threads_svc.fork_thread(session=session, thread_id=thread.id, message_id=reply.id)
    again = turns.ask(session=session, thread_id=fork.id, content="Again", model=deliverables_model([]))
    mine = artifacts_svc.artifacts_by_message(session=session, message_ids=[again.id])[again.id]
    assert sorted(a.handle for a in mine) == ["c2", "q2", "w2"]  # handles go on along the path
    in_fork = artifacts_svc.list_artifacts(session=session, workspace_id=ws.id, thread_id=fork.id, kind="workbook")
    in_source = artifacts_svc.list_artifacts(session=session, workspace_id=ws.id, thread_id=thread.id, kind="workbook")
    assert [a.handle for a in in_fork] == ["w2", "w1"] and [a.handle for a in in_source] == ["w1"]
    assert artifacts_svc.count_artifacts(session=session, workspace_id=ws.id, kind="chart") == 2
    made = artifacts_svc.made_in(session=session, artifacts=in_fork)
    assert {made[a.id][0] for a in in_fork} == {fork.id, thread.id}


def test_chat_and_artifacts_pages_draw_the_chart_and_the_workbook():
    at = app()
    at.button(key="load_sample").click().run()
    use_model(deliverables_model([]))
    at.button(key="new_thread").click().run()
    at.chat_input[0].set_value("Build a 2024 MRR bridge workbook with a chart").run()
    settle(at)
    assert not at.exception, at.exception
    shown = texts(at)
    assert "c1 · Ending MRR 2024" in shown and "w1 · MRR bridge 2024" in shown
    (chart,) = [n for n in _walk(at.main) if n.type == "vega_lite_chart"]
    assert "Ending MRR 2024" in chart.proto.spec
    assert [t.label for t in at.tabs] == ["Bridge", "MRR data", "Sources"]
    sheet = at.dataframe[1].value  # the result table first, then the workbook's first sheet
    assert float(sheet.loc[13, "G"]) == pytest.approx(reference_mrr(generate().subscriptions, 2024, 12), abs=0.005)  # computed when built
    formula = [s for s in at.selectbox if s.key and "_formula_0" in s.key][0]
    formula.set_value("G13").run()
    assert any(c.value == "=B13+C13+D13-E13-F13" for c in at.code)
    assert {b.label for b in at.get("download_button")} >= {"PNG", "SVG", "Download .xlsx", "CSV"}

    at.switch_page("views/artifacts.py").run()
    assert not at.exception, at.exception
    assert "3 artifact(s), newest first." in texts(at)
    at.selectbox(key=next(s.key for s in at.selectbox if s.key and s.key.startswith("artifacts_kind"))).set_value("workbook").run()
    assert "1 artifact(s), newest first." in texts(at)
    assert [t.label for t in at.tabs] == ["Bridge", "MRR data", "Sources"]


def _walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)
