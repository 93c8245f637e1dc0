"""The Compare page: two threads side by side from the message where they diverge, their key
figures paired with the differences highlighted.

Picks: the open thread on the left and, by default, its source (a fork) or its first fork on the
right; any two threads of the workspace can be chosen. Bounded work per rerun: two path reads
and the messages after the divergence (shared messages are counted, not drawn).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cfo_desk.services import threads as threads_svc
from cfo_desk.services.errors import ServiceError
from cfo_desk.services.session import open_session
from cfo_desk.ui import state
from cfo_desk.ui.format import figure, safe_label, safe_markdown

MAX_PAIRS = 50
"""Turn pairs drawn after the divergence (the rest are counted)."""
_CHANGED = "background-color: #fde68a; font-weight: 700; color: #111"


def render() -> None:
    """Draw the Compare page for the open workspace."""
    st.title("Compare")
    ws_id = state.current_workspace_id()
    if ws_id is None:
        st.info("Open or create a workspace in the sidebar first.")
        return
    with open_session() as session:
        threads = threads_svc.list_threads(session=session, workspace_id=ws_id, archived=None, limit=None)
    if not threads:
        st.info("Nothing to compare yet: ask a question, then fork it or edit it into a new branch.")
        return
    titles = {t.id: t.title for t in threads}
    by_id = {t.id: t for t in threads}
    current = state.current_thread_id()
    left_default = current if current in titles else threads[0].id
    source = by_id[left_default].forked_from_thread_id
    right_default = source if source in titles else next(
        (t.id for t in threads if t.forked_from_thread_id == left_default), next((t.id for t in threads if t.id != left_default), left_default)
    )
    mode = st.segmented_control("Compare", options=["Two threads", "Two branches of a thread"], default="Two threads", key=f"cmp_mode_{ws_id}")
    a, b = st.columns(2)
    heads: tuple[int | None, int | None] = (None, None)
    if mode == "Two branches of a thread":
        left = right = st.selectbox("Thread", options=list(titles), index=list(titles).index(left_default), format_func=titles.get, key=f"cmp_thread_{ws_id}")
        with open_session() as session:
            leaves = threads_svc.branch_leaves(session=session, thread_id=left)
        if len(leaves) < 2:
            st.info("This thread has one branch. Edit a question or regenerate an answer to make another.")
            return
        labels = {lf.message_id: f"{_short(lf.question, 60)} · #{lf.message_id}" + (" (shown)" if lf.is_head else "") for lf in leaves}
        ids = list(labels)
        heads = (
            a.selectbox("Left branch", options=ids, index=0, format_func=labels.get, key=f"cmp_lb_{left}"),
            b.selectbox("Right branch", options=ids, index=1, format_func=labels.get, key=f"cmp_rb_{left}"),
        )
        if heads[0] == heads[1]:
            st.info("Pick two different branches.")
            return
        side_titles = (labels[heads[0]], labels[heads[1]])
    elif len(threads) < 2:
        st.info("Two threads are needed: fork a thread (Fork from here) and ask the fork something else, or compare two branches of a thread.")
        return
    else:
        left = a.selectbox("Left", options=list(titles), index=list(titles).index(left_default), format_func=titles.get, key=f"cmp_left_{ws_id}")
        right = b.selectbox("Right", options=list(titles), index=list(titles).index(right_default), format_func=titles.get, key=f"cmp_right_{ws_id}")
        if left == right:
            st.info("Pick two different threads.")
            return
        side_titles = (titles[left], titles[right])
    try:
        with open_session() as session:
            cmp = threads_svc.compare(session=session, left_thread_id=left, right_thread_id=right, left_head=heads[0], right_head=heads[1])
    except ServiceError as exc:
        st.warning(safe_label(str(exc)))
        return
    shared = len(cmp.common)
    st.caption(
        (f"They share their first {shared:,} message(s), up to “{safe_label(_short(cmp.common[-1].content))}”. " if shared else "They share no message. ")
        + f"After that: {len(cmp.pairs):,} turn(s) side by side; {cmp.changed_figures:,} key figure(s) differ."
    )
    for n, pair in enumerate(cmp.pairs[:MAX_PAIRS], start=1):
        with st.container(border=True):
            st.markdown(f"**Turn {n} after the divergence**" + ("  :orange-badge[figures differ]" if pair.changed else ""))
            lcol, rcol = st.columns(2)
            _side(lcol, pair.left, side_titles[0])
            _side(rcol, pair.right, side_titles[1])
            if pair.figures:
                _figures(pair.figures, key=f"cmp_fig_{left}_{right}_{n}")
    if len(cmp.pairs) > MAX_PAIRS:
        st.caption(f"{len(cmp.pairs) - MAX_PAIRS:,} more turn(s) are not shown.")


def _short(text: str, n: int = 80) -> str:
    one = " ".join((text or "").split())
    return one if len(one) <= n else one[: n - 1] + "…"


def _side(col, turn, title: str) -> None:
    col.caption(safe_label(title))
    if turn is None:
        col.caption("No turn here.")
        return
    if turn.question is not None:
        col.markdown(":material/person: " + safe_markdown(turn.question.content))
    if turn.answer is None:
        col.caption("Not answered.")
    else:
        col.markdown(safe_markdown(turn.answer.content))


def figure_table(figures) -> pd.DataFrame:
    """The paired key figures as a table: label, left, right, difference, change (text, formatted by unit)."""
    rows = []
    for f in figures:
        rows.append({
            "Key figure": f.label,
            "Left": "—" if f.left is None else figure(f.left, f.unit or ""),
            "Right": "—" if f.right is None else figure(f.right, f.right_unit or f.unit or ""),
            "Difference": "" if f.difference is None else figure(f.difference, f.unit or ""),
            "Change": "" if f.relative is None else f"{f.relative:+.1%}",
        })
    return pd.DataFrame(rows)


def _figures(figures, *, key: str) -> None:
    frame = figure_table(figures)
    changed = [f.changed for f in figures]

    def mark(df):
        return pd.DataFrame([[_CHANGED if changed[i] else "" for _ in df.columns] for i in range(len(df))], index=df.index, columns=df.columns)

    st.dataframe(frame.style.apply(mark, axis=None), hide_index=True, key=key)
