"""The Artifacts page: the workspace's query results, a page at a time, with SQL, provenance and download."""

from __future__ import annotations

import math

import streamlit as st

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services.session import open_session
from cfo_desk.ui import results, state
from cfo_desk.ui.format import safe_label, short_hash

PAGE_SIZE = 20
"""Results drawn per page of the Artifacts page."""
PAGE_KEY = "artifacts_page"


def render() -> None:
    """Draw the Artifacts page for the open workspace: PAGE_SIZE results per page, newest first,
    each with its first rows (read once per session) and a CSV of all its rows."""
    st.title("Artifacts")
    ws_id = state.current_workspace_id()
    if ws_id is None:
        st.info("Open or create a workspace in the sidebar first.")
        return
    with open_session() as session:
        total = artifacts_svc.count_artifacts(session=session, workspace_id=ws_id)
    if not total:
        st.info("No results yet. Each query the agent runs is kept here with its SQL and the datasets it read.")
        return
    pages = math.ceil(total / PAGE_SIZE)
    page = 1
    if pages > 1:
        page = st.selectbox(
            "Page",
            options=range(1, pages + 1),
            format_func=lambda p: f"{p} of {pages}: results {(p - 1) * PAGE_SIZE + 1:,}–{min(p * PAGE_SIZE, total):,}",
            key=f"{PAGE_KEY}_{ws_id}",
        )
    with open_session() as session:
        arts = artifacts_svc.list_artifacts(session=session, workspace_id=ws_id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        questions = artifacts_svc.questions_for(session=session, artifacts=arts)
    st.caption(f"{total:,} query result(s), newest first.")
    shown = results.previews(arts)
    for art in arts:
        with st.expander(f"{safe_label(art.handle)} · {safe_label(art.title)} · {art.row_count:,} row(s) · {art.created_at:%Y-%m-%d %H:%M}"):
            question = questions.get(art.id)
            if question:
                st.caption(f"For the question: “{safe_label(question[:300])}”")
            st.code(art.sql or "", language="sql", wrap_lines=True)
            read = art.datasets_read
            if read:
                st.caption("Read: " + " · ".join(f"{safe_label(d['source'])} ({short_hash(d['sha256'])})" for d in read))
            preview = shown[art.id]
            results.result_table(art, preview, key=f"art_df_{art.id}")
            if not isinstance(preview, str):
                results.download_button(art, label="Download CSV", file_name=f"result-{art.id}.csv", key=f"art_csv_{art.id}")
