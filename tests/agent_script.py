"""Scripted models for tests: a FunctionModel that plays the CFO agent's tool calls.

`sql_script(["SELECT ...", ...], answer=...)` calls run_sql with each SQL in turn (a refused or
failing query counts, so ["bad", "good"] scripts a retry), then the final_result_FinalAnswer
output tool. Works for plain and streamed runs (the app streams progress events).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

Plan = Callable[[list[ModelMessage], AgentInfo], ModelResponse]


def turn_returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    """The tool returns since the last user prompt, in order."""
    out: list[ToolReturnPart] = []
    for m in messages:
        if isinstance(m, ModelRequest):
            if any(isinstance(p, UserPromptPart) for p in m.parts):
                out = []
            out.extend(p for p in m.parts if isinstance(p, ToolReturnPart))
    return out


def scripted(plan: Plan, *, delay_s: float = 0.0) -> FunctionModel:
    """A FunctionModel (plain and streaming) whose every response comes from `plan`, each after
    `delay_s` seconds of (asyncio) thinking time, like a real model's latency."""

    async def fn(messages, info):
        await asyncio.sleep(delay_s)
        return plan(messages, info)

    async def stream_fn(messages, info):
        await asyncio.sleep(delay_s)
        resp = plan(messages, info)
        for i, part in enumerate(resp.parts):
            if isinstance(part, TextPart):
                yield part.content
            elif isinstance(part, ToolCallPart):
                yield {i: DeltaToolCall(name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id)}

    return FunctionModel(fn, stream_function=stream_fn, model_name="scripted")


def output_call(info: AgentInfo, kind: str, args: dict[str, Any]) -> ToolCallPart:
    """Call the output tool whose name ends with `kind` (FinalAnswer or Clarification)."""
    name = next(t.name for t in info.output_tools if t.name.endswith(kind))
    return ToolCallPart(name, args)


def sql_script(
    sqls: list[str],
    answer: Callable[[list[ToolReturnPart]], dict[str, Any]] | dict[str, Any] | None = None,
    *,
    seen: list | None = None,
    delay_s: float = 0.0,
) -> FunctionModel:
    """Run each SQL via run_sql, then answer with `answer` (a dict, or built from the tool returns).

    `seen`, when given, receives each request's full message list (to assert what the model saw).
    """

    def plan(messages, info):
        if seen is not None:
            seen.append(list(messages))
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        if len(returns) < len(sqls):
            return ModelResponse(parts=[ToolCallPart("run_sql", {"purpose": f"Step {len(returns) + 1}", "sql": sqls[len(returns)]})])
        args = answer(returns) if callable(answer) else (answer or {"answer_markdown": "Done."})
        return ModelResponse(parts=[output_call(info, "FinalAnswer", args)])

    return scripted(plan, delay_s=delay_s)


def then_wait(first_sql: str, wait_s: float, answer: str = "Done.") -> FunctionModel:
    """A model that calls run_sql with `first_sql` at once, then thinks `wait_s` seconds (asyncio)
    before answering: a run with progress on record that is still going (for Stop and kill tests)."""

    async def stream(messages, info):
        returns = [r for r in turn_returns(messages) if r.tool_name == "run_sql"]
        if not returns:
            part = ToolCallPart("run_sql", {"purpose": "First look", "sql": first_sql})
        else:
            await asyncio.sleep(wait_s)
            part = output_call(info, "FinalAnswer", {"answer_markdown": answer})
        yield {0: DeltaToolCall(name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id)}

    async def plain(messages, info):  # pragma: no cover - the app always streams
        raise AssertionError("streamed runs only")

    return FunctionModel(plain, stream_function=stream, model_name="then-wait")


def result_content(ret: ToolReturnPart) -> dict[str, Any]:
    """The run_sql tool return as a dict (content may arrive as JSON text)."""
    c = ret.content
    return json.loads(c) if isinstance(c, str) else c


def retried_texts(messages: list[ModelMessage]) -> list[str]:
    """What the model was told each time a tool call or its output was sent back (ModelRetry)."""
    return [str(p.content) for m in messages if isinstance(m, ModelRequest) for p in m.parts if getattr(p, "outcome", "success") != "success"]
