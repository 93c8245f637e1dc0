"""Run one turn of the CFO agent: prompt + history in, output + full new history out, no storage.

Progress (each tool call with its purpose and SQL, each result's row count) is pushed to an
`on_progress` callback from pydantic-ai's event stream (the background worker persists it to the
run's row as it goes). Failures never raise: they come back as a readable sentence in
`TurnOutcome.error`. `run_agent_async` is the worker's form; `run_agent` the blocking one.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.exceptions import (
    AgentRunError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRateLimitError,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)
from pydantic_ai.messages import AgentStreamEvent, FunctionToolCallEvent, FunctionToolResultEvent, ModelMessage
from pydantic_ai.models import Model
from pydantic_ai.usage import UsageLimits

from cfo_desk.agent.core import get_agent
from cfo_desk.agent.deps import AgentDeps, DeliverableRecord, QueryResultRecord
from cfo_desk.agent.outputs import Clarification, FinalAnswer


@dataclass(frozen=True)
class Progress:
    """One step of a run, for the progress display.

    kind: "tool_call" (tool, purpose, sql set) or "tool_result" (tool, row_count or error set).
    """

    kind: str
    tool: str
    purpose: str | None = None
    sql: str | None = None
    row_count: int | None = None
    error: str | None = None


@dataclass
class TurnOutcome:
    """What a run produced. On success `output` and `new_messages_json` are set; else `error`.
    `results` are its queries' results, `deliverables` its charts and workbooks."""

    output: FinalAnswer | Clarification | None
    new_messages_json: bytes | None
    results: list[QueryResultRecord]
    error: str | None
    duration_s: float
    model_name: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    deliverables: list[DeliverableRecord] = field(default_factory=list)


def readable_error(exc: BaseException) -> str:
    """One or two sentences for the analyst describing why a run failed (never a traceback)."""
    if isinstance(exc, ModelAuthenticationError) or (isinstance(exc, ModelHTTPError) and exc.status_code in (401, 403)):
        return "The model provider rejected the API key (authentication failed). Check the provider's key (e.g. OPENAI_API_KEY or ANTHROPIC_API_KEY) and try again."
    if isinstance(exc, ModelRateLimitError) or (isinstance(exc, ModelHTTPError) and exc.status_code == 429):
        return "The model provider is rate-limiting requests right now. Wait a moment, then retry."
    if isinstance(exc, ModelConnectionError):
        return f"Could not reach the model server ({exc}). Check that it is running and that OPENAI_BASE_URL or the provider URL is right, then retry."
    if isinstance(exc, ModelHTTPError):
        body = exc.body.get("message", exc.body) if isinstance(exc.body, dict) else exc.body
        return f"The model provider answered with HTTP {exc.status_code} ({str(body)[:300]}). Retry, or check the model name."
    if isinstance(exc, ModelAPIError):
        return f"The model provider returned an error: {str(exc)[:300]}. Retry in a moment."
    if isinstance(exc, UsageLimitExceeded):
        return f"The agent stopped at its per-turn limit ({exc}). Try a narrower question."
    if isinstance(exc, UnexpectedModelBehavior):
        return f"The model did not produce a usable answer ({str(exc)[:300]}). Retry, or rephrase the question."
    if isinstance(exc, UserError):
        return f"The model is not configured correctly: {str(exc).split('. ')[0].rstrip('.')}."
    if isinstance(exc, AgentRunError):
        return f"The agent run failed: {str(exc)[:300]}."
    return f"The turn failed unexpectedly ({type(exc).__name__}: {str(exc)[:300]})."


def _tool_progress(event: AgentStreamEvent) -> Progress | None:
    if isinstance(event, FunctionToolCallEvent):
        args: Any = event.part.args_as_dict() if hasattr(event.part, "args_as_dict") else {}
        return Progress("tool_call", event.part.tool_name, purpose=args.get("purpose"), sql=args.get("sql"), error=None)
    if isinstance(event, FunctionToolResultEvent):
        part = event.part
        content = getattr(part, "content", None)
        if getattr(part, "part_kind", "") == "retry-prompt" or getattr(part, "outcome", "success") != "success":
            return Progress("tool_result", part.tool_name or "", error=str(content)[:500])
        rows = content.get("row_count") if isinstance(content, dict) else None
        return Progress("tool_result", part.tool_name or "", row_count=rows)
    return None


def _event_handler(notify: Callable[[Progress], Awaitable[None] | None] | None):
    """A pydantic-ai event stream handler that passes each tool step on to `notify`."""

    async def handle_events(_ctx: RunContext[AgentDeps], events: AsyncIterable[AgentStreamEvent]) -> None:
        async for event in events:
            step = _tool_progress(event)
            if step is not None:
                if notify is not None:
                    maybe = notify(step)
                    if inspect.isawaitable(maybe):
                        await maybe

    return handle_events


def _finished(result: Any, deps: AgentDeps, model: Model | str, started: float) -> TurnOutcome:
    usage = result.usage() if callable(result.usage) else result.usage  # a property in pydantic-ai 2.x
    return TurnOutcome(
        output=result.output,
        new_messages_json=result.new_messages_json(),
        results=list(deps.results),
        error=None,
        duration_s=time.perf_counter() - started,
        model_name=model if isinstance(model, str) else getattr(model, "model_name", None),
        input_tokens=getattr(usage, "input_tokens", None),
        output_tokens=getattr(usage, "output_tokens", None),
        deliverables=list(deps.deliverables),
    )


def _failed(exc: Exception, deps: AgentDeps, started: float) -> TurnOutcome:
    return TurnOutcome(None, None, list(deps.results), readable_error(exc), time.perf_counter() - started)


def run_agent(
    *,
    prompt: str,
    deps: AgentDeps,
    history: Sequence[ModelMessage],
    model: Model | str,
    usage_limits: UsageLimits,
    on_progress: Callable[[Progress], None] | None = None,
) -> TurnOutcome:
    """Run the CFO agent for one turn on the calling thread (no event loop may be running there)
    and return its outcome; never raises for run failures. The blocking form of
    `run_agent_async` (its own event loop per call).

    `history` is the path's stored pydantic-ai messages; `model` a pydantic-ai Model or model string.
    """
    return asyncio.run(
        run_agent_async(prompt=prompt, deps=deps, history=history, model=model, usage_limits=usage_limits, on_progress=on_progress)
    )


async def run_agent_async(
    *,
    prompt: str,
    deps: AgentDeps,
    history: Sequence[ModelMessage],
    model: Model | str,
    usage_limits: UsageLimits,
    on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
) -> TurnOutcome:
    """Run the CFO agent for one turn and return its outcome; never raises for run failures
    (they come back as `TurnOutcome.error`). Cancelling the awaiting task stops the run
    (asyncio.CancelledError propagates; the worker records the turn as stopped).

    `history` is the path's stored pydantic-ai messages; `model` a pydantic-ai Model or model
    string; `on_progress` gets each tool step (and is awaited when it returns an awaitable)."""
    started = time.perf_counter()
    try:
        result = await get_agent().run(
            prompt,
            deps=deps,
            message_history=list(history) or None,
            model=model,
            usage_limits=usage_limits,
            event_stream_handler=_event_handler(on_progress),
        )
    except Exception as exc:
        return _failed(exc, deps, started)
    return _finished(result, deps, model, started)
