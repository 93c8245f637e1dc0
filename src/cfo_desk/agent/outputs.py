"""The agent's outputs: a final answer with its key figures, or a clarifying question.

The model fills the documented fields. The app adds what it checked, in fields the model never
sees in the schema (`SkipJsonSchema`): each key figure's `trace` (the result cell it ties to, or
why it doesn't) and the answer's `tie_out_notes` (breakdowns that don't sum to their total).
`agent/tieout.py` sets them in the output validator.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema


class FigureTrace(BaseModel):
    """Where a key figure was found, set by the app's tie-out check (never by the model).

    status "traced": `handle`, `row` (0-based row of the result) and `column` name the cell whose
    value `cell` equals the figure after the figure's rounding. status "not_traced": `reason` says
    what the cited result holds instead (kept when the model's retries ran out)."""

    status: Literal["traced", "not_traced"]
    handle: str | None = None
    row: int | None = None
    column: str | None = None
    cell: float | None = None
    reason: str | None = None


class KeyFigure(BaseModel):
    """One headline number of an answer, traceable to the query that produced it."""

    label: str = Field(description="What the number is, e.g. 'MRR, December 2024'.")
    value: float = Field(
        description="The number itself as it stands in the cited result's cell, unrounded, in `unit` "
        "(for '%', the percentage: 12.5 for 12.5%)."
    )
    unit: str = Field(description="Currency code (e.g. 'USD'), '%', or a count noun such as 'customers' or 'months'.")
    period: str | None = Field(default=None, description="The period it covers, e.g. '2024-12' or 'FY2024'.")
    query: str | None = Field(default=None, description="Handle of the run_sql result it comes from, e.g. 'q1'. Required.")
    column: str | None = Field(default=None, description="The column of that result holding the number.")
    part_of: str | None = Field(
        default=None,
        description="For a breakdown: the label of the key figure (a total) this one is a part of. "
        "The parts of one total must sum to it.",
    )
    trace: SkipJsonSchema[FigureTrace | None] = None


class FinalAnswer(BaseModel):
    """The answer to the analyst's question, grounded in run_sql results."""

    answer_markdown: str = Field(
        description="The answer in Markdown: the figures with units and periods, how they were computed, "
        "and the assumptions made. Refer to results by their handle (q1, q2)."
    )
    key_figures: list[KeyFigure] = Field(
        default_factory=list,
        description="The headline numbers of the answer. Each cites the result (query) and column it comes from "
        "and must equal a cell of that result.",
    )
    queries: list[str] = Field(
        default_factory=list,
        description="Handles of the results to show under the answer, in order (default: all results of this turn).",
    )
    assumptions: list[str] = Field(default_factory=list, description="Definitions and assumptions used.")
    glossary_terms: list[str] = Field(
        default_factory=list,
        description="The workspace glossary terms whose definitions this answer used, as named in the instructions.",
    )
    tie_out_notes: SkipJsonSchema[list[str]] = Field(default_factory=list)


class Clarification(BaseModel):
    """A question back to the analyst when a definition or scope is ambiguous."""

    question: str = Field(description="The question to ask, in one or two sentences.")
    options: list[str] = Field(default_factory=list, description="Likely answers the analyst can pick from.")
    term: str | None = Field(
        default=None,
        description="When the question settles a definition, the glossary term it defines (e.g. 'active customer'), "
        "so the analyst can save the answer to the workspace glossary.",
    )


AgentOutput = FinalAnswer | Clarification
