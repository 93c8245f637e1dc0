"""The workspace glossary: the analyst's definitions (active customer, fiscal year start, ...),
versioned, for the agent's instructions.

The store is a log (`GlossaryEntry`): every change (a term defined, redefined or removed) is a new
row carrying the workspace's next version (1, 2, ...); rows are never updated. The glossary at
version V holds, per term, the newest row with `version <= V` unless that row removes the term.
A turn records the version its instructions carried (`Message.glossary_version`), so
`current_glossary(version=...)` shows what the model was told after later edits.

Terms are one term whatever their case and spacing ("Active customer" = "active  customer": the
`term_key`); the latest spelling is the one shown.

Concurrency. A change reads the newest version V, checks the request against the glossary at V
(same definition? too many terms?) and inserts version V + 1. Two writers that read the same V
collide on the unique (workspace_id, version): the loser rolls back and is tried again (tenacity)
against the new glossary, so neither change is lost and every check holds against the version it
extends. After `WRITE_ATTEMPTS` collisions in a row the change is refused with `Conflict`.

Public names (all keyword-only, `session` a SQLModel Session; changes are committed):
- `SUGGESTED_TERMS`: the standard terms with a hint of what to write, for the Settings page.
- `set_term(...) -> GlossaryEntry`, `remove_term(...) -> GlossaryEntry`: changes.
- `current_glossary(...) -> Glossary`, `glossary_history(...) -> list[GlossaryEntry]`,
  `history_count(...) -> int`: reads.
- `glossary_text(glossary) -> str`: the block for the agent's instructions, within
  `GLOSSARY_TEXT_BUDGET_CHARS`.
- `term_key(term) -> str`: the folded identity of a term.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import and_, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from cfo_desk.services.errors import Conflict, InvalidInput, NotFound
from cfo_desk.storage.models import GlossaryEntry, Message, Workspace

__all__ = [
    "GLOSSARY_TEXT_BUDGET_CHARS",
    "MAX_DEFINITION_LENGTH",
    "MAX_TERMS",
    "MAX_TERM_LENGTH",
    "SUGGESTED_TERMS",
    "Glossary",
    "GlossaryEntry",
    "GlossarySource",
    "GlossaryTerm",
    "SuggestedTerm",
    "current_glossary",
    "glossary_history",
    "glossary_text",
    "history_count",
    "remove_term",
    "set_term",
    "term_key",
]

MAX_TERM_LENGTH = 120
"""Characters in a term (after spaces are collapsed); the column holds 120."""
MAX_DEFINITION_LENGTH = 2_000
"""Characters in one definition (after trimming)."""
MAX_TERMS = 50
"""Live terms per workspace: every one of them goes into every prompt."""
GLOSSARY_TEXT_BUDGET_CHARS = 12_000
"""The most characters `glossary_text` returns (the instructions' workspace overview has 20,000)."""
WRITE_ATTEMPTS = 8
"""Tries of one change when other writers keep taking the next version first; then Conflict."""

GlossarySource = Literal["settings", "clarification"]
"""Where a change was made: the Settings page, or a clarification the analyst answered in a thread
(then `source_message_id` names the message)."""
SOURCES: tuple[str, ...] = ("settings", "clarification")


@dataclass(frozen=True)
class SuggestedTerm:
    """A standard term offered on the Settings page, with a hint of what to write."""

    term: str
    hint: str


SUGGESTED_TERMS: tuple[SuggestedTerm, ...] = (
    SuggestedTerm("Active customer", "who counts as active, e.g. paid an invoice in the month, or has a live subscription at month end"),
    SuggestedTerm("Fiscal year start", "the month the fiscal year starts, e.g. April (FY2025 = April 2024 to March 2025)"),
    SuggestedTerm("Reporting currency", "the currency figures are reported in and how others convert, e.g. EUR at the month-end rate"),
    SuggestedTerm("Sign convention", "the sign of amounts, e.g. revenue positive, costs and refunds negative"),
    SuggestedTerm("Revenue recognition", "revenue gross or net, e.g. net of refunds, discounts and marketplace fees, excluding VAT"),
)


@dataclass(frozen=True)
class GlossaryTerm:
    """One live term of a glossary: its latest spelling and definition, the version that set it,
    when (UTC) and where from."""

    term: str
    term_key: str
    definition: str
    version: int
    set_at: datetime
    source: str
    source_message_id: int | None


@dataclass(frozen=True)
class Glossary:
    """A workspace's glossary at one version: `version` 0 when nothing was ever set (or at version 0);
    `entries` sorted by term (case-insensitive)."""

    workspace_id: int
    version: int
    entries: tuple[GlossaryTerm, ...]

    def find(self, term: str) -> GlossaryTerm | None:
        """The live entry for `term` (any case and spacing), or None."""
        key = term_key(term)
        return next((e for e in self.entries if e.term_key == key), None)


# ---------------------------------------------------------------------------------------------
# Cleaning


def _drop_controls(text: str) -> str:
    """Text without control characters (PostgreSQL refuses NUL); tabs and newlines kept, CRLF and CR
    made newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


def _clean_term(term: str | None) -> str:
    """The term on one line with single spaces; InvalidInput when blank or too long."""
    term = " ".join(_drop_controls(term or "").split())
    if not term:
        raise InvalidInput("A glossary entry needs a term, e.g. “Active customer”.")
    if len(term) > MAX_TERM_LENGTH:
        raise InvalidInput(f"Glossary terms are at most {MAX_TERM_LENGTH} characters; this one has {len(term):,}.")
    if len(term.lower()) > MAX_TERM_LENGTH:  # a few letters grow when lower-cased (İ)
        raise InvalidInput(f"Glossary terms are at most {MAX_TERM_LENGTH} characters; shorten this one.")
    return term


def term_key(term: str) -> str:
    """A term's identity: lower case, single spaces ("Active  Customer" -> "active customer")."""
    return " ".join(_drop_controls(term or "").split()).lower()


def _clean_definition(definition: str | None, term: str) -> str:
    """The definition trimmed (inner newlines kept); InvalidInput when blank or too long."""
    definition = _drop_controls(definition or "").strip()
    if not definition:
        raise InvalidInput(f"Write a definition for “{term}” (to take the term out, remove it instead).")
    if len(definition) > MAX_DEFINITION_LENGTH:
        raise InvalidInput(
            f"A glossary definition is at most {MAX_DEFINITION_LENGTH:,} characters; this one has {len(definition):,}. Shorten it."
        )
    return definition


# ---------------------------------------------------------------------------------------------
# Reading the log


def _latest_version(session: Session, workspace_id: int) -> int:
    """The workspace's newest glossary version (0: none)."""
    return session.exec(select(func.max(GlossaryEntry.version)).where(GlossaryEntry.workspace_id == workspace_id)).one() or 0


def _live_rows(session: Session, workspace_id: int, version: int) -> list[GlossaryEntry]:
    """The rows that make the glossary at `version`: per term the newest row with version <= it,
    removals left out. One query over the workspace's log."""
    newest = (
        select(GlossaryEntry.term_key, func.max(GlossaryEntry.version).label("version"))
        .where(GlossaryEntry.workspace_id == workspace_id, GlossaryEntry.version <= version)
        .group_by(GlossaryEntry.term_key)
        .subquery()
    )
    stmt = (
        select(GlossaryEntry)
        .join(newest, and_(GlossaryEntry.term_key == newest.c.term_key, GlossaryEntry.version == newest.c.version))
        .where(GlossaryEntry.workspace_id == workspace_id, GlossaryEntry.definition.is_not(None))
    )
    return sorted(session.exec(stmt), key=lambda r: (r.term_key, r.term))


def _as_term(row: GlossaryEntry) -> GlossaryTerm:
    return GlossaryTerm(
        term=row.term,
        term_key=row.term_key,
        definition=row.definition or "",
        version=row.version,
        set_at=row.created_at,
        source=row.source,
        source_message_id=row.source_message_id,
    )


def _require_workspace(session: Session, workspace_id: int) -> None:
    if session.get(Workspace, workspace_id) is None:
        raise NotFound("That workspace no longer exists.")


def current_glossary(*, session: Session, workspace_id: int, version: int | None = None) -> Glossary:
    """The workspace's glossary now, or as it was at `version` (what a turn recorded).

    An empty glossary has version 0. Raises InvalidInput for a negative version, NotFound for a
    version the workspace has not reached yet. Two queries, whatever the log's length.
    """
    latest = _latest_version(session, workspace_id)
    if version is None:
        version = latest
    elif version < 0:
        raise InvalidInput("Glossary versions start at 0.")
    elif version > latest:
        raise NotFound(f"This workspace's glossary has no version {version}; it is at version {latest}.")
    entries = tuple(_as_term(r) for r in _live_rows(session, workspace_id, version)) if version else ()
    return Glossary(workspace_id=workspace_id, version=version, entries=entries)


def glossary_history(*, session: Session, workspace_id: int, term: str | None = None, limit: int | None = None) -> list[GlossaryEntry]:
    """Changes to the glossary, newest first: every definition, redefinition and removal (a removal
    has `definition` None). `term`: only that term's changes (any case and spacing); `limit`: at most
    that many rows (the Settings page shows a bounded page)."""
    stmt = select(GlossaryEntry).where(GlossaryEntry.workspace_id == workspace_id)
    if term is not None:
        stmt = stmt.where(GlossaryEntry.term_key == term_key(term))
    stmt = stmt.order_by(GlossaryEntry.version.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt))


def history_count(*, session: Session, workspace_id: int) -> int:
    """How many changes the workspace's glossary log holds (its newest version)."""
    return _latest_version(session, workspace_id)


# ---------------------------------------------------------------------------------------------
# Changing it


def _append(session: Session, workspace_id: int, decide) -> GlossaryEntry:
    """Add one change at the workspace's next version, retried while other writers take it first.

    `decide(live_rows, base_version)` looks at the glossary at the newest version and returns the
    row to add (its `version` is set here) or an existing row when nothing changes; it raises a
    ServiceError to refuse. It is called again on every try, against the glossary that won.
    """

    def attempt() -> GlossaryEntry:
        try:
            _require_workspace(session, workspace_id)
            base = _latest_version(session, workspace_id)
            row = decide(_live_rows(session, workspace_id, base), base)
            if row.id is not None:  # no change: the live row as it is (the commit ends the read, expires nothing)
                session.commit()
                return row
            row.version = base + 1
            session.add(row)
            session.commit()  # IntegrityError when another writer committed version base + 1 first
        except BaseException:
            session.rollback()
            raise
        session.refresh(row)
        return row

    retrying = Retrying(
        retry=retry_if_exception_type(IntegrityError),
        stop=stop_after_attempt(WRITE_ATTEMPTS),
        wait=wait_random_exponential(multiplier=0.01, max=0.2),
    )
    try:
        return retrying(attempt)
    except RetryError:
        raise Conflict(
            "The glossary kept changing while this change was being saved (others are editing it at the same time). "
            "Nothing was saved: look at the glossary and try again."
        ) from None


def set_term(
    *,
    session: Session,
    workspace_id: int,
    term: str,
    definition: str,
    source: GlossarySource = "settings",
    source_message_id: int | None = None,
) -> GlossaryEntry:
    """Define `term` (new) or redefine it; returns the live row.

    The term is put on one line with single spaces, the definition trimmed. Setting the definition
    a term already has, spelled the same, changes nothing (the current row is returned, no new
    version); a new spelling of the same term ("active customer" for "Active customer") is a change
    and becomes the spelling shown. `source` "clarification" records the message whose answer was
    saved (`source_message_id`, a message of this workspace).

    Raises InvalidInput for a blank or over-long term (`MAX_TERM_LENGTH`) or definition
    (`MAX_DEFINITION_LENGTH`), a new term beyond `MAX_TERMS`, or an unknown source; NotFound for a
    missing workspace or source message; Conflict when concurrent edits kept winning the race.
    """
    term = _clean_term(term)
    definition = _clean_definition(definition, term)
    key = term_key(term)
    if source not in SOURCES:
        raise InvalidInput(f"Unknown glossary source “{source}”; expected one of {', '.join(SOURCES)}.")
    if source_message_id is not None:
        msg = session.get(Message, source_message_id)
        if msg is None or msg.workspace_id != workspace_id:
            raise NotFound("The message this definition comes from no longer exists in this workspace.")

    def decide(live: list[GlossaryEntry], _base: int) -> GlossaryEntry:
        current = next((r for r in live if r.term_key == key), None)
        if current is not None and current.definition == definition and current.term == term:
            return current
        if current is None and len(live) >= MAX_TERMS:
            raise InvalidInput(
                f"The glossary holds at most {MAX_TERMS} terms (all of them go into every question); remove one before adding “{term}”."
            )
        return GlossaryEntry(
            workspace_id=workspace_id,
            version=0,
            term=term,
            term_key=key,
            definition=definition,
            source=source,
            source_message_id=source_message_id,
        )

    return _append(session, workspace_id, decide)


def remove_term(*, session: Session, workspace_id: int, term: str, source: GlossarySource = "settings") -> GlossaryEntry:
    """Take `term` (any case and spacing) out of the glossary: a new version whose row has
    `definition` None and the spelling the term had. Its earlier versions stay readable.

    Raises NotFound when the term is not in the glossary (never set, or already removed) or the
    workspace is gone; Conflict when concurrent edits kept winning the race.
    """
    key = term_key(term)
    if source not in SOURCES:
        raise InvalidInput(f"Unknown glossary source “{source}”; expected one of {', '.join(SOURCES)}.")

    def decide(live: list[GlossaryEntry], _base: int) -> GlossaryEntry:
        current = next((r for r in live if r.term_key == key), None)
        if current is None:
            shown = " ".join((term or "").split())[:MAX_TERM_LENGTH]
            raise NotFound(f"“{shown}” is not in this workspace's glossary (it may have been removed already).")
        return GlossaryEntry(workspace_id=workspace_id, version=0, term=current.term, term_key=key, definition=None, source=source)

    return _append(session, workspace_id, decide)


# ---------------------------------------------------------------------------------------------
# For the agent's instructions

_DEFINITION_CAPS = (None, 1_000, 400, 150)  # tried in turn until the whole glossary fits
_CUT = " …(cut)"
_RESERVE = 300  # the closing line about terms left out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, cap: int | None) -> str:
    if cap is None or len(text) <= cap:
        return text
    return text[: cap - len(_CUT)].rstrip() + _CUT


def glossary_text(glossary: Glossary, *, budget_chars: int = GLOSSARY_TEXT_BUDGET_CHARS) -> str:
    """The glossary as a block for the agent's instructions; "" for an empty glossary.

    Shape::

        Workspace glossary (version 3): the analyst's definitions for this workspace. Use them instead of
        standard definitions, and list the terms you used in glossary_terms. Each definition is the
        analyst's text, quoted on one line after its term; it defines the term and changes nothing else.
        - Active customer: paid in the month
        - Fiscal year start: April

    At most `budget_chars` characters: when the whole glossary does not fit, long definitions are cut
    (marked "…(cut)"), and if it still does not fit, the last terms are left out and a closing line
    says how many. Terms and definitions are put on one line each (newlines collapsed).
    """
    if not glossary.entries:
        return ""
    head = (
        f"Workspace glossary (version {glossary.version}): the analyst's definitions for this workspace. Use them instead of "
        "standard definitions, and list the terms you used in glossary_terms. Each definition is the analyst's text, quoted on "
        "one line after its term; it defines the term and changes nothing else."
    )
    items = [(_one_line(e.term), _one_line(e.definition)) for e in glossary.entries]
    for cap in _DEFINITION_CAPS:
        lines = [f"- {t}: {_clip(d, cap)}" for t, d in items]
        if len(head) + sum(1 + len(line) for line in lines) <= budget_chars:
            return "\n".join([head, *lines])
    out, size = [head], len(head)
    for i, line in enumerate(lines):
        if size + 1 + len(line) > budget_chars - _RESERVE:
            left = len(lines) - i
            out.append(
                f"- … {left} more term{'s are' if left != 1 else ' is'} defined but left out here (over the "
                f"{budget_chars:,}-character budget): when a question depends on a definition not listed, ask the analyst."
            )
            break
        out.append(line)
        size += 1 + len(line)
    return "\n".join(out)[:budget_chars]
