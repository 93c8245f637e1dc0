"""The agent's outputs: a final answer with its key figures, or a clarifying question."""

from __future__ import annotations

from pydantic import BaseModel, Field


class KeyFigure(BaseModel):
    """One headline number of an answer, traceable to the query that produced it."""

    label: str = Field(description="What the number is, e.g. 'MRR, December 2024'.")
    value: float = Field(description="The number itself, unrounded, in `unit`.")
    unit: str = Field(description="Currency code (e.g. 'USD'), '%', or a count noun such as 'customers' or 'months'.")
    period: str | None = Field(default=None, description="The period it covers, e.g. '2024-12' or 'FY2024'.")
    query: str | None = Field(default=None, description="Handle of the run_sql result it comes from, e.g. 'q1'.")


class FinalAnswer(BaseModel):
    """The answer to the analyst's question, grounded in run_sql results."""

    answer_markdown: str = Field(
        description="The answer in Markdown: the figures with units and periods, how they were computed, "
        "and the assumptions made. Refer to results by their handle (q1, q2)."
    )
    key_figures: list[KeyFigure] = Field(default_factory=list, description="The headline numbers of the answer.")
    queries: list[str] = Field(
        default_factory=list,
        description="Handles of the results to show under the answer, in order (default: all results of this turn).",
    )
    assumptions: list[str] = Field(default_factory=list, description="Definitions and assumptions used.")


class Clarification(BaseModel):
    """A question back to the analyst when a definition or scope is ambiguous."""

    question: str = Field(description="The question to ask, in one or two sentences.")
    options: list[str] = Field(default_factory=list, description="Likely answers the analyst can pick from.")


AgentOutput = FinalAnswer | Clarification
