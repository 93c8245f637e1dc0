"""The Artifacts page: everything the workspace's runs made (query results, charts, workbooks), a
page at a time, filtered by kind and thread, each with where it came from, a preview and a download."""

from __future__ import annotations

import math

import streamlit as st

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services import threads as threads_svc
from cfo_desk.services.errors import ServiceError
from cfo_desk.services.session import open_session
from cfo_desk.ui import deliverables, results, state
from cfo_desk.ui.format import safe_label, short_hash

PAGE_SIZE = 20
"""Artifacts drawn per page of the Artifacts page."""
PAGE_KEY = "artifacts_page"
KIND_LABELS = {None: "All kinds", "query_result": "Query results", "chart": "Charts", "workbook": "Workbooks"}
KIND_ICONS = {"query_result": ":material/table:", "chart": ":material/bar_chart:", "workbook": ":material/grid_on:"}


def render() -> None:
    """Draw the Artifacts page for the open workspace: PAGE_SIZE artifacts per page, newest first,
    filtered by kind and thread; each with its kind, title, the thread that made it (a link), the
    question, when, the datasets it read, a preview (read once per session) and a download."""
    st.title("Artifacts")
    ws_id = state.current_workspace_id()
    if ws_id is None:
        st.info("Open or create a workspace in the sidebar first.")
        return
    with open_session() as session:
        threads = {t.id: t.title for t in threads_svc.list_threads(session=session, workspace_id=ws_id, archived=None, limit=None)}
    left, right = st.columns(2)
    kind = left.selectbox("Kind", options=list(KIND_LABELS), format_func=KIND_LABELS.get, key=f"artifacts_kind_{ws_id}")
    thread_id = right.selectbox(
        "Thread",
        options=[None, *threads],
        format_func=lambda t: "All threads" if t is None else threads.get(t, f"thread {t}"),  # options are plain text
        key=f"artifacts_thread_{ws_id}",
    )
    try:
        with open_session() as session:
            total = artifacts_svc.count_artifacts(session=session, workspace_id=ws_id, kind=kind, thread_id=thread_id)
    except ServiceError as exc:  # the thread was deleted meanwhile
        st.warning(safe_label(str(exc)))
        return
    if not total:
        st.info(
            "Nothing here yet. Each query result, chart and workbook the agent makes is kept here with its SQL and the datasets it read."
            if kind is None and thread_id is None
            else "No artifacts match these filters."
        )
        return
    pages = math.ceil(total / PAGE_SIZE)
    page = 1
    if pages > 1:
        page = st.selectbox(
            "Page",
            options=range(1, pages + 1),
            format_func=lambda p: f"{p} of {pages}: {(p - 1) * PAGE_SIZE + 1:,}–{min(p * PAGE_SIZE, total):,}",
            key=f"{PAGE_KEY}_{ws_id}_{kind}_{thread_id}",
        )
    with open_session() as session:
        arts = artifacts_svc.list_artifacts(
            session=session, workspace_id=ws_id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, kind=kind, thread_id=thread_id
        )
        questions = artifacts_svc.questions_for(session=session, artifacts=arts)
        made_in = artifacts_svc.made_in(session=session, artifacts=arts)
    st.caption(f"{total:,} artifact(s), newest first.")
    shown = results.previews(a for a in arts if a.kind == "query_result")
    for art in arts:
        kind_label = KIND_LABELS.get(art.kind, art.kind).rstrip("s").lower()
        label = f"{safe_label(art.handle)} · {kind_label} · {safe_label(art.title)}"
        if art.kind == "query_result":
            label += f" · {art.row_count:,} row(s)"
        with st.expander(f"{label} · {art.created_at:%Y-%m-%d %H:%M}", icon=KIND_ICONS.get(art.kind)):
            origin = made_in.get(art.id)
            row = st.container(horizontal=True, vertical_alignment="center")
            if origin is not None and row.button(
                f"Thread: {safe_label(origin[1])}", key=f"art_thread_{art.id}", type="tertiary", icon=":material/forum:"
            ):
                state.open_thread(origin[0])
                state.go_to_chat()
            question = questions.get(art.id)
            if question:
                row.caption(f"For the question: “{safe_label(question[:300])}”")
            read = art.datasets_read
            if read:
                st.caption("Read: " + " · ".join(f"{safe_label(d['source'])} ({short_hash(d['sha256'])})" for d in read))
            if art.kind == "query_result":
                st.code(art.sql or "", language="sql", wrap_lines=True)
                preview = shown[art.id]
                results.result_table(art, preview, key=f"art_df_{art.id}")
                if not isinstance(preview, str):
                    results.download_button(art, label="Download CSV", file_name=f"result-{art.id}.csv", key=f"art_csv_{art.id}")
            else:
                deliverables.draw(art, key=f"art_{art.id}")
