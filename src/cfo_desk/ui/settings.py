"""The Settings page: what the app is configured with (read-only; set through env or .env), and the
open workspace's glossary (the analyst's definitions the agent uses, versioned).

Every text that came from the analyst or a model (terms, definitions) goes through `safe_label` /
`safe_markdown` before Streamlit renders it. The page's work per rerun is bounded: the live glossary
(at most `MAX_TERMS` terms), the newest `HISTORY_SHOWN` changes and one glossary at a chosen version.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import streamlit as st

from cfo_desk.services import glossary as glossary_svc
from cfo_desk.services.errors import ServiceError
from cfo_desk.services.session import open_session
from cfo_desk.services.settings import configuration
from cfo_desk.services.turns import asking_problem
from cfo_desk.ui import state
from cfo_desk.ui.format import safe_label, safe_markdown

HISTORY_SHOWN = 50
"""Changes listed in the glossary's history expander (newest first)."""
HISTORY_DEFINITION_CHARS = 200
"""Characters of a definition shown per history line."""
OTHER_TERM = "Another term…"
"""The term picker's choice for a term that is not one of the suggested ones."""

_PICK = "glossary_pick"
_FREE_TERM = "glossary_term"
_GEN = "_glossary_form_gen"  # bumped after a save: the definition box starts over


def render() -> None:
    """Draw the Settings page."""
    st.title("Settings")
    state.show_flashes()
    st.caption("Set these in the environment or a .env file next to app.py, then restart.")
    problem = asking_problem()
    if problem:
        st.warning(problem)
    else:
        st.success("A model is configured: questions can be asked.")
    rows = configuration()
    st.table({"Setting": [k for k, _ in rows], "Value": [v for _, v in rows]})
    st.divider()
    glossary_section(state.current_workspace_id())


# ---------------------------------------------------------------------------------------------
# Glossary


def glossary_section(ws_id: int | None) -> None:
    """The open workspace's glossary: its entries, a form to add or redefine a term, removal, history."""
    st.header("Glossary", anchor=False)
    if ws_id is None:
        st.info("Pick or create a workspace in the sidebar to see and edit its glossary.")
        return
    with open_session() as session:
        glossary = glossary_svc.current_glossary(session=session, workspace_id=ws_id)
    st.caption(
        "Definitions for this workspace (active customer, fiscal year, currency, …). Every question's instructions carry "
        "them, answers name the terms they used, and each answer records the glossary version it was given."
    )
    n = len(glossary.entries)
    st.markdown(
        f"**Version {glossary.version}** · {n} term{'s' if n != 1 else ''} (at most {glossary_svc.MAX_TERMS})"
        if glossary.version
        else "**Version 0** · no terms yet"
    )
    _entries(ws_id, glossary)
    _term_form(ws_id, glossary)
    _history(ws_id, glossary.version)


def _key_id(term_key: str) -> str:
    """A short, stable widget-key part for a term (terms may hold any character)."""
    return hashlib.sha1(term_key.encode()).hexdigest()[:12]


def _when(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC"


def _where(source: str, message_id: int | None) -> str:
    if source == "clarification":
        return f"from a clarification in a thread (message {message_id})" if message_id else "from a clarification in a thread"
    return "on the Settings page" if source == "settings" else f"from {safe_label(source)}"


def _entries(ws_id: int, glossary: glossary_svc.Glossary) -> None:
    defined = {e.term_key for e in glossary.entries}
    missing = [s.term for s in glossary_svc.SUGGESTED_TERMS if glossary_svc.term_key(s.term) not in defined]
    for e in glossary.entries:
        with st.container(border=True):
            text, buttons = st.columns([5, 1], vertical_alignment="center")
            text.markdown(f"**{safe_label(e.term)}**  \n{safe_markdown(e.definition)}")
            text.caption(f"Version {e.version} · set {_when(e.set_at)} {_where(e.source, e.source_message_id)}")
            kid = _key_id(e.term_key)
            buttons.button("Redefine", key=f"glossary_edit_{kid}", icon=":material/edit:", on_click=_redefine, args=(e.term,), width="stretch")
            if buttons.button("Remove", key=f"glossary_remove_{kid}", icon=":material/delete:", width="stretch"):
                try:
                    with open_session() as session:
                        row = glossary_svc.remove_term(session=session, workspace_id=ws_id, term=e.term)
                except ServiceError as exc:
                    st.error(safe_label(str(exc)))
                else:
                    state.flash(f"Removed “{safe_label(row.term)}” (glossary version {row.version}).", "info")
                    st.rerun()
    if missing:
        st.caption("Not defined yet: " + ", ".join(missing) + ". Pick one below.")


def _redefine(term: str) -> None:
    """Button callback (runs before the widgets are drawn): put `term` into the form."""
    suggested = {glossary_svc.term_key(s.term): s.term for s in glossary_svc.SUGGESTED_TERMS}
    key = glossary_svc.term_key(term)
    if key in suggested:
        st.session_state[_PICK] = suggested[key]
    else:
        st.session_state[_PICK] = OTHER_TERM
        st.session_state[_FREE_TERM] = term


def _term_form(ws_id: int, glossary: glossary_svc.Glossary) -> None:
    """Pick a suggested term (or type another), write its definition, save. The definition box is
    filled with the term's current definition, so redefining edits it."""
    st.subheader("Add or redefine a term", anchor=False)
    hints = {s.term: s.hint for s in glossary_svc.SUGGESTED_TERMS}
    defined = {e.term_key for e in glossary.entries}
    options = [*hints, OTHER_TERM]
    if st.session_state.get(_PICK) not in options:
        st.session_state.pop(_PICK, None)
    pick = st.selectbox(
        "Term",
        options,
        key=_PICK,
        format_func=lambda o: f"{o} (defined)" if o != OTHER_TERM and glossary_svc.term_key(o) in defined else o,
    )
    if pick == OTHER_TERM:
        term = st.text_input(
            "Term name",
            key=_FREE_TERM,
            max_chars=glossary_svc.MAX_TERM_LENGTH,
            placeholder="e.g. Churned customer",
            help="Any case and spacing: “Churned customer” and “churned  customer” are one term.",
        )
        hint = None
    else:
        term, hint = pick, hints[pick]
        st.caption(f"Write {hint}.")
    current = glossary.find(term) if term.strip() else None
    gen = st.session_state.get(_GEN, 0)
    box_key = f"glossary_definition_{gen}_{_key_id(glossary_svc.term_key(term))}_{current.version if current else 0}"
    definition = st.text_area(
        "Definition",
        value=current.definition if current else "",
        key=box_key,
        max_chars=glossary_svc.MAX_DEFINITION_LENGTH,
        placeholder=hint or "What the term means in this workspace's data",
        height=100,
    )
    if st.button("Save definition", key="glossary_save", type="primary", icon=":material/save:"):
        try:
            with open_session() as session:
                row = glossary_svc.set_term(session=session, workspace_id=ws_id, term=term, definition=definition)
        except ServiceError as exc:
            st.error(safe_label(str(exc)))
            return
        if current is not None and row.version == current.version:
            state.flash(f"“{safe_label(row.term)}” already has that definition: nothing changed (version {row.version}).", "info")
        else:
            state.flash(f"Saved “{safe_label(row.term)}” as glossary version {row.version}.")
        st.session_state[_GEN] = gen + 1
        st.rerun()


def _history(ws_id: int, version: int) -> None:
    """The newest changes (bounded) and the glossary as it was at a chosen version."""
    if not version:
        return
    with st.expander(f"History ({version} change{'s' if version != 1 else ''})", icon=":material/history:"):
        with open_session() as session:
            rows = glossary_svc.glossary_history(session=session, workspace_id=ws_id, limit=HISTORY_SHOWN)
        lines = []
        for r in rows:
            where = _where(r.source, r.source_message_id)
            if r.definition is None:
                lines.append(f"- **v{r.version}** · {_when(r.created_at)} · {safe_label(r.term)} removed {where}")
            else:
                shown = r.definition if len(r.definition) <= HISTORY_DEFINITION_CHARS else r.definition[: HISTORY_DEFINITION_CHARS - 1] + "…"
                lines.append(f"- **v{r.version}** · {_when(r.created_at)} · {safe_label(r.term)} = {safe_label(shown)} ({where})")
        st.markdown("\n".join(lines))
        if version > HISTORY_SHOWN:
            st.caption(f"The newest {HISTORY_SHOWN} of {version:,} changes.")
        if version > 1:
            at = st.number_input("See the glossary as it was at version", min_value=1, max_value=version, value=version, step=1, key=f"glossary_at_{ws_id}_{version}")
            with open_session() as session:
                then = glossary_svc.current_glossary(session=session, workspace_id=ws_id, version=int(min(at, version)))
            if then.entries:
                st.markdown("\n".join(f"- **{safe_label(e.term)}**: {safe_label(e.definition)} (v{e.version})" for e in then.entries))
            else:
                st.caption(f"At version {then.version} the glossary was empty.")
