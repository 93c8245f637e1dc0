"""The Artifacts page: every query result of the workspace with its SQL, provenance and download."""

from __future__ import annotations

import streamlit as st

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services.session import open_session
from cfo_desk.ui import state
from cfo_desk.ui.format import column_config, for_display, safe_label, short_hash


def render() -> None:
    """Draw the Artifacts page for the open workspace."""
    st.title("Artifacts")
    ws_id = state.current_workspace_id()
    if ws_id is None:
        st.info("Open or create a workspace in the sidebar first.")
        return
    with open_session() as session:
        arts = artifacts_svc.list_artifacts(session=session, workspace_id=ws_id)
        questions = artifacts_svc.questions_for(session=session, artifacts=arts)
    if not arts:
        st.info("No results yet. Each query the agent runs is kept here with its SQL and the datasets it read.")
        return
    st.caption(f"{len(arts)} query result(s), newest first.")
    for art in arts:
        with st.expander(f"{safe_label(art.handle)} · {safe_label(art.title)} · {art.row_count:,} row(s) · {art.created_at:%Y-%m-%d %H:%M}"):
            question = questions.get(art.id)
            if question:
                st.caption(f"For the question: “{safe_label(question[:300])}”")
            st.code(art.sql or "", language="sql", wrap_lines=True)
            read = art.datasets_read
            if read:
                st.caption("Read: " + " · ".join(f"{safe_label(d['source'])} ({short_hash(d['sha256'])})" for d in read))
            with open_session() as session:
                try:
                    frame = artifacts_svc.result_frame(session=session, artifact=art)
                except Exception as exc:  # a missing file is reported, not fatal
                    st.warning(safe_label(str(exc)))
                    continue
            shown = for_display(frame.head(200))
            st.dataframe(shown, hide_index=True, column_config=column_config(shown))
            st.download_button("Download CSV", artifacts_svc.to_safe_csv(frame), file_name=f"result-{art.id}.csv", mime="text/csv", key=f"art_csv_{art.id}")
