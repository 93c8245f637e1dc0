"""The chat page: a thread's conversation, its answers with their tables and SQL, fork and retry."""

from __future__ import annotations

import json

import streamlit as st

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services import threads as threads_svc
from cfo_desk.services import turns
from cfo_desk.services.errors import ServiceError
from cfo_desk.services import samples
from cfo_desk.services.session import open_session
from cfo_desk.services.artifacts import Artifact
from cfo_desk.services.threads import Message, MessageStatus, Role
from cfo_desk.services.turns import Progress
from cfo_desk.ui import state
from cfo_desk.ui.format import column_config, figure, for_display, safe_markdown, short_hash


def render() -> None:
    """Draw the chat page for the open workspace and thread."""
    state.show_flashes()
    ws_id = state.current_workspace_id()
    if ws_id is None:
        st.title("CFO Desk")
        st.markdown(
            "Ask finance questions of your own exports. Create a workspace in the sidebar and upload CSV or "
            "Excel files, or **Load sample workspace** to try it on a SaaS company's data."
        )
        return

    problem = turns.asking_problem()
    # A submitted question is run on the next pass, after the composer is drawn disabled, so nothing
    # can be typed (and lost) while the agent works.
    pending = None if problem else st.session_state.pop("_pending_prompt", None)
    thread_id = state.current_thread_id()
    with open_session() as session:
        try:
            thread = threads_svc.get_thread(session=session, thread_id=thread_id) if thread_id else None
        except ServiceError:
            thread = None
        if thread is not None and thread.workspace_id != ws_id:
            thread = None
        if thread is None and thread_id is not None:
            state.open_thread(None)  # a deleted or foreign thread: start fresh, and say so in the URL
        messages = threads_svc.conversation(session=session, thread_id=thread.id) if thread else []
        arts = artifacts_svc.artifacts_by_message(session=session, message_ids=[m.id for m in messages])
    frames = {a.id: _frame(a.id, a.file_path, a.handle) for items in arts.values() for a in items}

    if thread is None:
        st.title("New thread")
        st.caption("Ask a question about this workspace's data. Each answer shows its figures, the tables and SQL behind them.")
    else:
        head_col, menu_col = st.columns([6, 1], vertical_alignment="bottom")
        head_col.title(thread.title)
        with menu_col.popover("Thread", icon=":material/more_horiz:"):
            _thread_menu(thread)
        if thread.forked_from_message_id is not None:
            st.caption(
                f":material/call_split: Forked from “{thread.forked_from_thread_title}” at message #{thread.forked_from_message_id}. "
                "Turns here never appear in the source thread, and the reverse."
            )
    if problem:
        st.info(problem, icon=":material/key:")

    for msg in messages:
        _message(msg, thread.id, arts.get(msg.id, []), frames, is_head=(msg.id == thread.head_message_id), can_ask=not problem)

    if not messages and not problem and pending is None:
        with open_session() as session:
            suggestions = samples.suggested_questions(session=session, workspace_id=ws_id)[:6]
        if suggestions:
            st.markdown("**Try asking**")
        cols = st.columns(2)
        for i, q in enumerate(suggestions):
            if cols[i % 2].button(q, key=f"sample_q_{i}", width="stretch"):
                st.session_state["_pending_prompt"] = q
                st.rerun()

    head = messages[-1] if messages else None
    unanswered = head is not None and head.role == Role.user
    if unanswered and not problem:
        st.warning("This question has no answer yet. Answer it to go on, or fork from an earlier message.")
        if st.button("Answer this question", icon=":material/play_arrow:", key="answer_unanswered"):
            _run(thread.id, head, fresh=False)

    if pending is not None:
        placeholder = "Working on your question…"
    elif unanswered:
        placeholder = "Answer the open question first"
    else:
        placeholder = "Ask about your data, e.g. What was MRR in December 2024?"
    prompt = st.chat_input(placeholder, disabled=bool(problem) or unanswered or pending is not None, key="composer")
    if prompt and not problem:
        st.session_state["_pending_prompt"] = prompt
        st.rerun()
    if pending:
        prompt = pending
        if thread is None:
            with open_session() as session:
                thread = threads_svc.create_thread(session=session, workspace_id=ws_id)
            state.open_thread(thread.id)
        try:
            with open_session() as session:
                user_msg = turns.add_user_message(session=session, thread_id=thread.id, content=prompt)
        except ServiceError as exc:
            st.error(str(exc))
            return
        _run(thread.id, user_msg, fresh=True)


def _thread_menu(thread) -> None:
    with st.form(f"rename_thread_{thread.id}", border=False):
        title = st.text_input("Title", value=thread.title, key=f"thread_title_{thread.id}")
        if st.form_submit_button("Rename", key=f"rename_thread_btn_{thread.id}"):
            try:
                with open_session() as session:
                    threads_svc.rename_thread(session=session, thread_id=thread.id, title=title)
            except ServiceError as exc:
                st.error(str(exc))
            else:
                st.rerun()
    sure = st.checkbox("Delete this thread, its answers and their results (forks made from it stay whole)", key=f"sure_delete_{thread.id}")
    if st.button("Delete thread", icon=":material/delete:", key=f"delete_thread_{thread.id}", disabled=not sure):
        with open_session() as session:
            threads_svc.delete_thread(session=session, thread_id=thread.id)
        state.open_thread(None)
        state.flash(f"Deleted thread “{thread.title}”.", "info")
        st.rerun()


@st.cache_data(max_entries=256, show_spinner=False)
def _frame(artifact_id: int, file_path: str, handle: str):
    """The result's rows, or a sentence saying why they can't be shown (never breaks the thread).

    Cached per artifact: a committed result file never changes (its path holds the run's uuid), so
    reruns don't re-read every Parquet file on the path. `file_path` is part of the key on purpose.
    """
    try:
        with open_session() as session:
            artifact = artifacts_svc.get_artifact(session=session, artifact_id=artifact_id)
            return artifacts_svc.result_frame(session=session, artifact=artifact)
    except Exception as exc:  # a missing or unreadable file must not take the whole thread down
        return f"The result of {handle} can't be shown: {exc}"


def _run(thread_id: int, user_msg: Message, *, fresh: bool) -> None:
    """Answer `user_msg`, showing live progress, then rerun to draw the stored result."""
    if fresh:
        with st.chat_message("user"):
            st.markdown(user_msg.content)
    with st.chat_message("assistant"):
        with st.status("Working on it…", expanded=True) as status:

            def on_progress(p: Progress) -> None:
                if p.kind == "tool_call":
                    if p.tool == "run_sql":
                        st.markdown(f"**Running SQL:** {safe_markdown(p.purpose or '')}")
                        if p.sql:
                            st.code(p.sql, language="sql", wrap_lines=True)
                    elif p.tool.startswith("final_result"):
                        st.markdown("Writing the answer…")
                    else:
                        st.markdown(f"Calling `{p.tool}`…")
                elif p.error:
                    st.markdown(f":orange[`{p.tool}` failed; the agent will try again:] {p.error[:300]}")
                elif p.row_count is not None:
                    st.markdown(f"→ {p.row_count:,} row(s)")

            with open_session() as session:
                reply = turns.answer(
                    session=session,
                    thread_id=thread_id,
                    user_message_id=user_msg.id,
                    model=turns.configured_model(),
                    on_progress=on_progress,
                )
            if reply.status == MessageStatus.failed:
                status.update(label="The turn failed", state="error", expanded=False)
            else:
                status.update(label=f"Done in {reply.duration_s or 0:.1f} s", state="complete", expanded=False)
    st.rerun()


def _message(msg: Message, thread_id: int, arts: list[Artifact], frames: dict, *, is_head: bool, can_ask: bool) -> None:
    role = "user" if msg.role == Role.user else "assistant"
    with st.chat_message(role):
        if msg.role == Role.user:
            st.markdown(msg.content)
        elif msg.status == MessageStatus.failed:
            st.error(msg.error or msg.content, icon=":material/error:")
            st.caption("A failed turn is not sent to the model in later turns; Retry to run it again.")
            if is_head and st.button("Retry", key=f"retry_{msg.id}", icon=":material/refresh:", disabled=not can_ask):
                with open_session() as session:
                    user_msg = threads_svc.get_message(session=session, message_id=msg.parent_id)
                _run(thread_id, user_msg, fresh=False)
        elif msg.status == MessageStatus.clarification:
            st.markdown(":material/help: **A question before I answer**")
            output = json.loads(msg.output_json or "{}")
            st.markdown(safe_markdown(output.get("question") or msg.content))
            options = output.get("options") or []
            if is_head and options:
                cols = st.columns(min(len(options), 3))
                for i, option in enumerate(options):
                    if cols[i % len(cols)].button(option, key=f"option_{msg.id}_{i}", disabled=not can_ask):
                        st.session_state["_pending_prompt"] = option
                        st.rerun()
            st.caption("Pick an answer" + (" above" if is_head and options else "") + ", or reply in the box below.")
        else:
            _answer(msg, arts, frames)
        _message_footer(msg, thread_id)


def _answer(msg: Message, arts: list[Artifact], frames: dict) -> None:
    output = json.loads(msg.output_json or "{}")
    figures = output.get("key_figures") or []
    if figures:
        cols = st.columns(min(len(figures), 4))
        for i, f in enumerate(figures):
            cols[i % len(cols)].metric(f.get("label", ""), figure(f.get("value", 0), f.get("unit", "")), help=_figure_help(f))
    st.markdown(safe_markdown(msg.content))
    if output.get("assumptions"):
        st.caption("Assumptions: " + safe_markdown(" · ".join(output["assumptions"])))
    shown = output.get("queries") or [a.handle for a in arts]
    by_handle = {a.handle: a for a in arts}
    for handle in [h for h in shown if h in by_handle] or [a.handle for a in arts]:
        _result(by_handle[handle], frames.get(by_handle[handle].id))
    read = {(d["source"], d["sha256"]) for a in arts for d in artifacts_svc.datasets_read(a)}
    if read:
        st.caption("Datasets read: " + " · ".join(f"{src} ({short_hash(sha)})" for src, sha in sorted(read)))


def _figure_help(f: dict) -> str:
    parts = [f"Value: {f.get('value')} {f.get('unit', '')}"]
    if f.get("period"):
        parts.append(f"Period: {f['period']}")
    if f.get("query"):
        parts.append(f"From result {f['query']}")
    return " · ".join(parts)


def _result(art: Artifact, frame) -> None:
    with st.container(border=True):
        st.markdown(f"**{art.handle} · {safe_markdown(art.title)}**  ·  {art.row_count:,} row(s)" + (" (truncated)" if art.truncated else ""))
        if isinstance(frame, str):
            st.warning(frame)
        else:
            shown = for_display(frame)
            st.dataframe(shown, hide_index=True, column_config=column_config(shown), key=f"df_{art.id}")
        left, right = st.columns([4, 1])
        with left.expander("SQL"):
            st.code(art.sql or "", language="sql", wrap_lines=True)
            if art.duration_s is not None:
                st.caption(f"Ran in {art.duration_s:.3f} s")
        if not isinstance(frame, str):
            right.download_button(
                "CSV",
                data=artifacts_svc.to_safe_csv(frame),
                file_name=f"{art.handle}-{art.title[:40].strip().replace(' ', '_') or 'result'}.csv",
                mime="text/csv",
                key=f"csv_{art.id}",
                icon=":material/download:",
            )


def _message_footer(msg: Message, thread_id: int) -> None:
    cols = st.columns([1, 5], vertical_alignment="center")
    if cols[0].button("Fork from here", key=f"fork_{msg.id}", icon=":material/call_split:", type="tertiary"):
        with open_session() as session:
            fork = threads_svc.fork_thread(session=session, thread_id=thread_id, message_id=msg.id)
        state.open_thread(fork.id)
        state.flash(f"Forked into “{fork.title}”. Ask a different question here; the original thread is unchanged.", "info")
        st.rerun()
    if msg.role == Role.assistant and msg.duration_s is not None:
        meta = f"#{msg.id} · {msg.duration_s:.1f} s"
        if msg.model_name:
            meta += f" · {msg.model_name}"
        cols[1].caption(meta)
    else:
        cols[1].caption(f"#{msg.id}")
