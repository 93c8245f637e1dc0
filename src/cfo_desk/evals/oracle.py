"""The oracle: a scripted model that answers each eval case through the agent's own tools.

For a case's question it calls `run_sql` with the case's reference SQL, reads the tool return (the
shape of `sandbox.result_for_model`: `result` handle, `columns` [{name, type}], `rows` as lists),
and emits the `FinalAnswer` output tool with one key figure per expected figure, whose `value` is
copied from the result cell exactly (`query` = the handle, `column` = the column name), so the
app's tie-out check finds each figure in the result it cites. It answers through the full path
(`services.turns.ask`: run queue, sandboxed SQL in a worker process, artifacts, store), so an
oracle score below 100% means the path, the reference SQL or the scoring is broken.

`distort={case_name: factor}` plants a wrong answer: that case's figures are reported multiplied
by `factor` (e.g. 1.1), which the suite must score as a failure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from cfo_desk.evals.cases import CASES, EvalCase

__all__ = ["ORACLE_MODEL_NAME", "oracle_model"]

ORACLE_MODEL_NAME = "oracle"
MAX_ROWS_IN_ANSWER = 20


def _turn(messages: list[ModelMessage]) -> tuple[str, list[ToolReturnPart]]:
    """The current turn's question and the tool returns since it, in order."""
    question, returns = "", []
    for m in messages:
        if not isinstance(m, ModelRequest):
            continue
        for p in m.parts:
            if isinstance(p, UserPromptPart):
                question, returns = p.content if isinstance(p.content, str) else str(p.content), []
            elif isinstance(p, ToolReturnPart):
                returns.append(p)
    return question.strip(), returns


def _content(ret: ToolReturnPart) -> Any:
    c = ret.content
    return json.loads(c) if isinstance(c, str) and c.startswith("{") else c


def _output_tool(info: AgentInfo, kind: str) -> str:
    return next(t.name for t in info.output_tools if t.name.endswith(kind))


def _answer(case: EvalCase, result: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """The FinalAnswer arguments: each expected figure copied from its cell (times `factor`)."""
    names = [c["name"] for c in result["columns"]]
    rows = result["rows"]
    figures, missing = [], []
    for fig in case.figures:
        col = names.index(fig.column) if fig.column in names else None
        row = next(
            (i for i, r in enumerate(rows) if fig.key is None or (fig.key[0] in names and r[names.index(fig.key[0])] == fig.key[1])),
            None,
        )
        if col is None or row is None or rows[row][col] is None:
            missing.append(fig.label)
            continue
        value = rows[row][col]
        figures.append({
            "label": fig.label,
            "value": value * factor if factor != 1 else value,
            "unit": fig.unit,
            "query": result["result"],
            "column": fig.column,
        })
    table = "\n".join(
        ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        + ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows[:MAX_ROWS_IN_ANSWER]]
    )
    lines = [f"Reference answer for `{case.name}` ({result['result']}):", "", table]
    if missing:
        lines += ["", "Not found in the result: " + ", ".join(missing) + "."]
    return {
        "answer_markdown": "\n".join(lines),
        "key_figures": figures,
        "queries": [result["result"]],
        "assumptions": [case.definition],
    }


def oracle_model(cases: Sequence[EvalCase] = CASES, *, distort: Mapping[str, float] | None = None) -> FunctionModel:
    """A FunctionModel (plain and streamed) that answers each of `cases` with its reference SQL.

    A question that is not one of the cases gets a FinalAnswer saying so, without figures; a
    reference query the sandbox refuses or fails gets a FinalAnswer quoting the error (both fail
    their case). `distort` maps case names to a factor applied to that case's figures."""
    by_question = {c.question.strip(): c for c in cases}
    factors = dict(distort or {})

    def plan(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        question, returns = _turn(messages)
        case = by_question.get(question)
        final = _output_tool(info, "FinalAnswer")
        if case is None:
            return ModelResponse(parts=[ToolCallPart(final, {"answer_markdown": "The oracle knows no case with this question."})])
        sql_returns = [r for r in returns if r.tool_name == "run_sql"]
        if not sql_returns:
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": f"Reference SQL for {case.name}", "sql": case.sql})])
        last = sql_returns[-1]
        if getattr(last, "outcome", "success") != "success":
            text = f"The reference SQL of {case.name} failed: {str(last.content)[:500]}"
            return ModelResponse(parts=[ToolCallPart(final, {"answer_markdown": text})])
        return ModelResponse(parts=[ToolCallPart(final, _answer(case, _content(last), factors.get(case.name, 1.0)))])

    async def fn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return plan(messages, info)

    async def stream_fn(messages: list[ModelMessage], info: AgentInfo):
        await asyncio.sleep(0)
        resp = plan(messages, info)
        for i, part in enumerate(resp.parts):
            if isinstance(part, TextPart):  # pragma: no cover - the oracle only calls tools
                yield part.content
            elif isinstance(part, ToolCallPart):
                yield {i: DeltaToolCall(name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id)}

    return FunctionModel(fn, stream_function=stream_fn, model_name=ORACLE_MODEL_NAME)
