"""The chat page: a thread's conversation, its answers with their tables and SQL, fork and retry.

The page never runs the agent. Asking queues a run (services/runs.py) that the process's
background worker executes; while a run of the thread is open, a fragment re-reads its progress
every second, and the page redraws when it ends. Leaving, reloading or closing the page changes
nothing for the run.
"""

from __future__ import annotations


import streamlit as st
import streamlit.components.v1 as components

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services import glossary as glossary_svc
from cfo_desk.services import runs, samples, turns, worker
from cfo_desk.services import threads as threads_svc
from cfo_desk.services.artifacts import Artifact
from cfo_desk.services.errors import ServiceError
from cfo_desk.services.runs import Run, RunStatus
from cfo_desk.services.session import open_session
from cfo_desk.services.threads import Message, MessageStatus, Role, utcnow
from cfo_desk.ui import deliverables, results, state
from cfo_desk.ui.format import figure, safe_label, safe_markdown, short_hash


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
            st.warning(
                f"Thread {thread_id} isn't in this workspace (it was deleted, or the link is from another workspace). "
                "A new thread is open instead.",
                icon=":material/link_off:",
            )
        # Open runs first: a run that ends between the two reads then shows as its answer (already
        # in `messages`), never as a question without an answer and without a run.
        live = runs.open_runs(session=session, thread_id=thread.id) if thread else []
        messages = threads_svc.conversation(session=session, thread_id=thread.id) if thread else []
        # Read after `messages`: a queued run that started in between has committed its question,
        # which the live view draws (else the question showed twice, seen in chromium).
        live_questions = runs.question_ids(session=session, run_ids=[r.id for r in live])
        # From the first question a run is working on, the live view draws the thread (a Retry's
        # question and not its old failed reply; a started question and its progress).
        cut = next((i for i, m in enumerate(messages) if m.id in live_questions), len(messages))
        # A long thread draws its last messages only (bounded work per rerun); "Show earlier" adds more.
        focus = st.session_state.get(_FOCUS_MESSAGE)
        if thread and focus is not None and (at := next((i for i, m in enumerate(messages) if m.id == focus), None)) is not None:
            st.session_state[_shown_key(thread)] = max(st.session_state.get(_shown_key(thread), SHOW_LAST_MESSAGES), cut - at)
        shown_from = max(0, cut - st.session_state.get(_shown_key(thread), SHOW_LAST_MESSAGES)) if thread else 0
        visible = messages[shown_from:cut]
        arts = artifacts_svc.artifacts_by_message(session=session, message_ids=[m.id for m in visible])
        ended = runs.runs_by_reply(session=session, message_ids=[m.id for m in visible if not MessageStatus(m.status).answered])
        glossary = glossary_svc.current_glossary(session=session, workspace_id=ws_id) if thread else None
        branches = threads_svc.siblings(session=session, thread_id=thread.id, message_ids=[m.id for m in visible]) if thread else {}
        forks = threads_svc.forks_of(session=session, thread_id=thread.id) if thread else {}
    frames = results.previews(a for items in arts.values() for a in items if a.kind == "query_result")

    if thread is None:
        st.title("New thread")
        st.caption("Ask a question about this workspace's data. Each answer shows its figures, the tables and SQL behind them.")
    else:
        head_col, menu_col = st.columns([6, 1], vertical_alignment="bottom")
        head_col.title(safe_label(thread.title))
        with menu_col.popover("Thread", icon=":material/more_horiz:"):
            _thread_menu(thread)
        if thread.forked_from_message_id is not None:
            row = st.container(horizontal=True, vertical_alignment="center")
            row.caption(":material/call_split: Forked from", width="content")
            if row.button(
                f"{safe_label(thread.forked_from_thread_title)} · message #{thread.forked_from_message_id}",
                key="lineage_source", type="tertiary", help="Open the source thread at the message this fork branches from",
            ):
                _open_at(thread.forked_from_thread_id, thread.forked_from_message_id)
            row.caption("Turns here never appear in the source thread, and the reverse.", width="content")
    if problem:
        st.info(problem, icon=":material/key:")

    path_results = {a.handle: a for items in arts.values() for a in items if a.kind == "query_result"}
    by_id = {m.id: m for m in messages}
    if shown_from > 0:
        more = min(shown_from, SHOW_LAST_MESSAGES)
        st.caption(f"{shown_from:,} earlier message(s) of this thread are not shown.")
        if st.button(f"Show {more:,} earlier message(s)", key=f"show_earlier_{thread.id}", icon=":material/expand_less:"):
            st.session_state[_shown_key(thread)] = st.session_state.get(_shown_key(thread), SHOW_LAST_MESSAGES) + SHOW_LAST_MESSAGES
            st.rerun()
    for msg in visible:
        if msg.id == st.session_state.get(_FOCUS_MESSAGE):
            _scroll_here(msg)
        _message(
            msg,
            thread.id,
            arts.get(msg.id, []),
            frames,
            is_head=(msg.id == thread.head_message_id),
            can_ask=not problem,
            run=ended.get(msg.id),
            path_results=path_results,
            branches=branches.get(msg.id),
            can_branch=not problem and not live,
        )
        if forks.get(msg.id):
            _fork_links(msg, forks[msg.id])
        asked = by_id.get(msg.parent_id)
        if msg.role == Role.user and asked is not None and asked.status == MessageStatus.clarification and (asked.output or {}).get("term"):
            _save_to_glossary(msg, asked.output["term"], glossary)

    if not messages and not live and not problem:
        with open_session() as session:
            suggestions = samples.suggested_questions(session=session, workspace_id=ws_id)[:6]
        if suggestions:
            st.markdown("**Try asking**")
        cols = st.columns(2)
        for i, q in enumerate(suggestions):
            if cols[i % 2].button(safe_label(q), key=f"sample_q_{i}", width="stretch"):
                _enqueue_and_rerun(ws_id, None, q)

    if live:
        _live_runs(thread.id, [r.id for r in live])

    head = messages[-1] if messages else None
    unanswered = head is not None and head.role == Role.user and not live
    if unanswered and not problem:
        st.warning("This question has no answer yet. Answer it as is, or edit it and send it as a new branch.")
        if st.button("Answer this question", icon=":material/play_arrow:", key="answer_unanswered"):
            _answer_and_rerun(thread.id, head.id)

    if live:
        placeholder = "Ask a follow-up: it runs when the current question is answered"
    elif unanswered:
        placeholder = "Answer the open question first"
    else:
        placeholder = "Ask about your data, e.g. What was MRR in December 2024?"
    st.chat_input(
        placeholder,
        disabled=bool(problem) or unanswered,
        key=COMPOSER,
        on_submit=_submit,
        args=(ws_id, thread.id if thread else None),
    )


COMPOSER = "composer"
SHOW_LAST_MESSAGES = 40
"""Messages of a thread drawn at first (20 turns); "Show earlier" adds as many again."""


def _shown_key(thread) -> str:
    return f"_shown_messages_{thread.id}"

LIVE_REFRESH_S = 1.0  # how often an open run's progress is re-read while the page shows it


def _submit(ws_id: int, thread_id: int | None) -> None:
    """The composer's callback (runs before the page is drawn): queue the question. A refused
    question is put back into the composer with the reason, so nothing typed is lost."""
    text = st.session_state.get(COMPOSER)
    if isinstance(text, str) and not _enqueue(ws_id, thread_id, text):
        st.session_state[COMPOSER] = text


def _enqueue(ws_id: int, thread_id: int | None, text: str) -> bool:
    """Queue `text` in the thread (a new one for None) and open that thread; flash why if refused."""
    try:
        with open_session() as session:
            run = runs.enqueue_question(session=session, workspace_id=ws_id, thread_id=thread_id, content=text)
    except ServiceError as exc:
        state.flash(safe_label(str(exc)), "error")
        return False
    state.open_thread(run.thread_id)  # the URL names the thread from now on: a reload lands here
    worker.wake_worker()
    return True


def _enqueue_and_rerun(ws_id: int, thread_id: int | None, text: str) -> None:
    _enqueue(ws_id, thread_id, text)
    st.rerun()


def _answer_and_rerun(thread_id: int, user_message_id: int) -> None:
    """Queue a run that answers an existing question (Retry, or a question forked open)."""
    try:
        with open_session() as session:
            runs.enqueue_answer(session=session, thread_id=thread_id, user_message_id=user_message_id)
    except ServiceError as exc:
        state.flash(safe_label(str(exc)), "error")
    worker.wake_worker()
    st.rerun()


def _live_runs(thread_id: int, run_ids: list[int]) -> None:
    """The thread's open runs, re-read every LIVE_REFRESH_S seconds by a fragment (drawn only while
    a run is open, so an idle page does no polling). When one of them ends, the whole page reruns
    to draw its committed answer."""

    @st.fragment(run_every=LIVE_REFRESH_S)
    def live() -> None:
        worker.start_worker()  # a no-op while it runs; restarts a worker that died
        with open_session() as session:
            current = runs.open_runs_with_questions(session=session, thread_id=thread_id)
        if set(run_ids) - {r.id for r, _q in current}:
            st.rerun()  # a run ended (or was withdrawn): draw its answer with the conversation
        for position, (run, question) in enumerate(current):
            _live_run(run, question, waiting=position)

    live()


def _live_run(run: Run, question: str, *, waiting: int) -> None:
    with st.chat_message("user"):
        st.markdown(safe_markdown(question))
    with st.chat_message("assistant"):
        if run.status == RunStatus.queued:
            ahead = "the current question" if waiting <= 1 else f"{waiting} questions"
            st.caption(f":material/schedule: Queued: runs after {ahead} in this thread.")
            st.button("Withdraw", key=f"withdraw_{run.id}", icon=":material/close:", type="tertiary", on_click=_withdraw, args=(run.id, run.prompt))
            return
        elapsed = (utcnow() - run.started_at).total_seconds() if run.started_at else 0.0
        label = "Stopping…" if run.stop_requested else f"Working on it… {elapsed:,.0f} s"
        # Not used as a context manager: leaving the `with` block marks a status complete.
        box = st.status(label, expanded=True, state="running")
        if not run.progress:
            box.caption("Reading the question and the workspace's tables…")
        for step in run.progress:
            _progress_step(step, box)
        if not run.stop_requested:
            st.button("Stop", key=f"stop_{run.id}", icon=":material/stop_circle:", on_click=_stop, args=(run.id,))


def _stop(run_id: int) -> None:
    """Stop's callback (before the redraw, so the live view already says "Stopping…")."""
    try:
        with open_session() as session:
            runs.request_stop(session=session, run_id=run_id)
    except ServiceError as exc:  # e.g. the thread was deleted in another tab
        state.flash(safe_label(str(exc)), "error")


def _withdraw(run_id: int, prompt: str | None) -> None:
    """Withdraw a queued question; its text goes back into the composer, so nothing typed is lost."""
    _stop(run_id)
    if prompt:
        st.session_state[COMPOSER] = prompt


def _progress_step(p: dict, box=st) -> None:
    """One tool step of a run (from `Run.progress`) drawn into `box`: the call with its purpose and
    SQL, or its result."""
    at = f"{p.get('at_s') or 0:,.1f} s · "
    tool = p.get("tool") or ""
    if p.get("kind") == "tool_call":
        if tool == "run_sql":
            box.markdown(f"{at}**Running SQL:** {safe_label(p.get('purpose') or '')}")
            if p.get("sql"):
                box.code(p["sql"], language="sql", wrap_lines=True)
        elif tool.startswith("final_result"):
            box.markdown(f"{at}Writing the answer…")
        else:
            box.markdown(f"{at}Calling {safe_label(tool)}…")
    elif p.get("error"):
        box.markdown(f"{at}{safe_label(tool)} :orange[failed; the agent will try again:] {safe_label(p['error'][:300])}")
    elif p.get("row_count") is not None:
        box.markdown(f"{at}→ {p['row_count']:,} row(s)")


def _thread_menu(thread) -> None:
    with st.form(f"rename_thread_{thread.id}", border=False):
        title = st.text_input("Title", value=thread.title, key=f"thread_title_{thread.id}")
        if st.form_submit_button("Rename", key=f"rename_thread_btn_{thread.id}"):
            try:
                with open_session() as session:
                    threads_svc.rename_thread(session=session, thread_id=thread.id, title=title)
            except ServiceError as exc:
                st.error(safe_label(str(exc)))
            else:
                st.rerun()
    if st.button("Compare with another thread", icon=":material/compare_arrows:", key=f"compare_thread_{thread.id}"):
        st.switch_page("views/compare.py", query_params=state.url_params())
    archived = thread.archived_at is not None
    if st.button("Unarchive thread" if archived else "Archive thread", icon=":material/archive:", key=f"archive_thread_{thread.id}",
                 help="Archived threads leave the list (the Archived switch shows them); nothing is deleted"):
        with open_session() as session:
            (threads_svc.unarchive_thread if archived else threads_svc.archive_thread)(session=session, thread_id=thread.id)
        state.flash(f"{'Unarchived' if archived else 'Archived'} “{safe_label(thread.title)}”.", "info")
        st.rerun()
    sure = st.checkbox("Delete this thread, its answers and their results (forks made from it stay whole)", key=f"sure_delete_{thread.id}")
    if st.button("Delete thread", icon=":material/delete:", key=f"delete_thread_{thread.id}", disabled=not sure):
        with open_session() as session:
            threads_svc.delete_thread(session=session, thread_id=thread.id)
        state.open_thread(None)
        state.flash(f"Deleted thread “{safe_label(thread.title)}”.", "info")
        st.rerun()


def _save_to_glossary(reply: Message, term: str, glossary) -> None:
    """Under the analyst's answer to a clarifying question that settles a definition: one click
    saves "term = answer" to the workspace glossary (or says it is there already)."""
    known = glossary.find(term) if glossary is not None else None
    definition = " ".join(reply.content.split())
    if known is not None and " ".join((known.definition or "").split()) == definition:
        st.caption(f":material/menu_book: In the workspace glossary as {safe_label(known.term)} (version {known.version}).")
        return
    label = f"Save to glossary: {(known.term if known else term)} = {definition}"
    if st.button(safe_label(label[:120] + ("…" if len(label) > 120 else "")), key=f"glossary_{reply.id}", icon=":material/bookmark_add:", type="tertiary"):
        try:
            with open_session() as session:
                entry = glossary_svc.set_term(
                    session=session,
                    workspace_id=reply.workspace_id,
                    term=known.term if known else term,
                    definition=reply.content,
                    source="clarification",
                    source_message_id=reply.id,
                )
        except ServiceError as exc:
            state.flash(safe_label(str(exc)), "error")
        else:
            state.flash(f"Saved “{safe_label(entry.term)}” to the glossary (version {entry.version}): later questions use it.", "success")
        st.rerun()


def _message(
    msg: Message,
    thread_id: int,
    arts: list[Artifact],
    frames: dict,
    *,
    is_head: bool,
    can_ask: bool,
    run: Run | None = None,
    path_results: dict[str, Artifact] | None = None,
    branches: threads_svc.Siblings | None = None,
    can_branch: bool = False,
) -> None:
    """One message of the conversation. `path_results` maps handles of the path's results to
    their artifacts (a key figure may cite an earlier turn's result); `branches` are its siblings
    in this thread (‹n/m›); `can_branch` allows Edit and Regenerate (no run open, a model set)."""
    path_results = path_results or {a.handle: a for a in arts if a.kind == "query_result"}
    role = "user" if msg.role == Role.user else "assistant"
    with st.chat_message(role):
        if msg.role == Role.user and st.session_state.get(_EDITING) == msg.id:
            _edit_box(msg, thread_id)
        elif msg.role == Role.user:
            st.markdown(safe_markdown(msg.content))  # may be a clarification option the model wrote
        elif not MessageStatus(msg.status).answered:
            _unanswered_reply(msg, run)
            if is_head and st.button("Retry", key=f"retry_{msg.id}", icon=":material/refresh:", disabled=not can_ask):
                _answer_and_rerun(thread_id, msg.parent_id)
        elif msg.status == MessageStatus.clarification:
            st.markdown(":material/help: **A question before I answer**")
            output = msg.output or {}
            st.markdown(safe_markdown(output.get("question") or msg.content))
            options = output.get("options") or []
            if is_head and options:
                cols = st.columns(min(len(options), 3))
                for i, option in enumerate(options):
                    if cols[i % len(cols)].button(safe_label(option), key=f"option_{msg.id}_{i}", disabled=not can_ask):
                        _enqueue_and_rerun(msg.workspace_id, thread_id, option)
            st.caption("Pick an answer" + (" above" if is_head and options else "") + ", or reply in the box below.")
        else:
            _answer(msg, arts, frames, path_results)
        _message_footer(msg, thread_id, branches, can_branch=can_branch)


_ENDED = {
    MessageStatus.failed: ("The turn failed", ":material/error:"),
    MessageStatus.stopped: ("Stopped", ":material/stop_circle:"),
    MessageStatus.interrupted: ("Interrupted", ":material/power_off:"),
}


def _unanswered_reply(msg: Message, run: Run | None) -> None:
    """A turn that ended without an answer: why, what it did until then, and that Retry re-runs it."""
    status = MessageStatus(msg.status)
    title, icon = _ENDED.get(status, _ENDED[MessageStatus.failed])
    text = safe_markdown(msg.error or msg.content)
    if status == MessageStatus.failed:
        st.error(text, icon=icon)
    else:
        st.warning(f"**{title}.** {text}", icon=icon)
    if run is not None and run.progress:
        with st.expander(f"What the agent did before it ended ({len(run.progress)} step(s))"):
            for step in run.progress:
                _progress_step(step)
    st.caption("A turn without an answer is not sent to the model in later turns; Retry to run it again.")


def _answer(msg: Message, arts: list[Artifact], frames: dict, path_results: dict[str, Artifact]) -> None:
    output = msg.output or {}
    figures = output.get("key_figures") or []
    if figures:
        _key_figures(msg, figures, path_results, frames)
    for note in output.get("tie_out_notes") or []:
        st.error(safe_markdown(note), icon=":material/functions:")
    st.markdown(safe_markdown(msg.content))
    if output.get("assumptions"):
        st.caption("Assumptions: " + safe_markdown(" · ".join(output["assumptions"])))
    if output.get("glossary_terms"):
        version = f" (glossary version {msg.glossary_version})" if msg.glossary_version else ""
        st.caption(f":material/menu_book: Definitions from the workspace glossary{version}: " + " · ".join(safe_label(t) for t in output["glossary_terms"]))
    tables = [a for a in arts if a.kind == "query_result"]
    shown = output.get("queries") or [a.handle for a in tables]
    by_handle = {a.handle: a for a in tables}
    for handle in [h for h in shown if h in by_handle] or [a.handle for a in tables]:
        _result(by_handle[handle], frames.get(by_handle[handle].id))
    for art in arts:
        if art.kind != "query_result":
            deliverables.draw(art, key=f"msg_{art.id}")
    read = {(d["source"], d["sha256"]) for a in arts for d in a.datasets_read}
    if read:
        st.caption("Datasets read: " + " · ".join(f"{safe_label(src)} ({short_hash(sha)})" for src, sha in sorted(read)))


_FOCUS = "_figure_focus"  # session_state: {answer message id: index of the key figure whose source cell is open}
SOURCE_ROWS_AROUND = 3
"""Rows shown above and below a key figure's source cell."""


def _key_figures(msg: Message, figures: list[dict], path_results: dict[str, Artifact], frames: dict) -> None:
    """The headline figures, each with where it was checked: ✓ handle · row · column (click: the
    cell in its result, highlighted), or ✗ not traced in red with what the result holds instead."""
    cols = st.columns(min(len(figures), 4))
    focus: dict = st.session_state.setdefault(_FOCUS, {})
    for i, f in enumerate(figures):
        col = cols[i % len(cols)]
        col.metric(safe_label(f.get("label", "")), safe_label(figure(f.get("value", 0), f.get("unit", ""))), help=safe_label(_figure_help(f)))
        trace = f.get("trace")
        if not trace:  # answers from before tie-out: the help tooltip names the result
            continue
        if trace.get("status") == "traced":
            label = f"✓ {trace.get('handle')} · row {int(trace.get('row') or 0) + 1:,} · {trace.get('column')}"
            if col.button(safe_label(label), key=f"trace_{msg.id}_{i}", type="tertiary", help="Show the cell this figure comes from"):
                focus[msg.id] = None if focus.get(msg.id) == i else i
                st.rerun()
        else:
            col.markdown(":red[:material/close: **not traced**]")
            col.caption(safe_markdown(trace.get("reason") or "It matches no cell of the result it cites."))
    i = focus.get(msg.id)
    if i is not None and i < len(figures) and (trace := figures[i].get("trace") or {}).get("status") == "traced":
        art = path_results.get(trace.get("handle"))
        if art is not None:
            _figure_source(figures[i], trace, art, frames.get(art.id))


def _figure_source(fig: dict, trace: dict, art: Artifact, preview) -> None:
    """The rows around a key figure's source cell, the cell highlighted (read from the preview
    when it holds them, else only those rows from the result file)."""
    row, column = int(trace.get("row") or 0), trace.get("column")
    start, stop = max(0, row - SOURCE_ROWS_AROUND), row + SOURCE_ROWS_AROUND + 1
    try:
        if isinstance(preview, results.Table) and min(stop, art.row_count) <= preview.rows:
            data = preview.data
            window = (data.slice(start, stop - start).to_pandas() if hasattr(data, "slice") else data.iloc[start:stop].reset_index(drop=True))
            window.index = range(start, start + len(window))
        else:
            with open_session() as session:
                window = artifacts_svc.result_rows(session=session, artifact=art, start=start, stop=stop)
    except Exception as exc:  # a missing file must not take the page down
        st.warning(safe_label(f"The source cell can't be shown: {exc}"))
        return
    window.index = [i + 1 for i in window.index]  # rows numbered from 1, as in the ✓ line

    def mark(frame):
        styles = frame.astype(str).map(lambda _: "")
        if row + 1 in styles.index and column in styles.columns:
            styles.loc[row + 1, column] = "background-color: #fde68a; font-weight: 700; color: #111"
        return styles

    with st.container(border=True):
        st.markdown(
            f":material/my_location: **{safe_label(fig.get('label', ''))}** comes from "
            f"**{safe_label(art.handle)}** · row {row + 1:,} · column {safe_label(column or '')}: {safe_label(art.title)}"
        )
        st.dataframe(window.style.apply(mark, axis=None), key=f"source_{art.id}_{row}_{column}")


def _figure_help(f: dict) -> str:
    parts = [f"Value: {f.get('value')} {f.get('unit', '')}"]
    if f.get("period"):
        parts.append(f"Period: {f['period']}")
    if f.get("query"):
        parts.append(f"From result {f['query']}" + (f", column {f['column']}" if f.get("column") else ""))
    return " · ".join(parts)


def _result(art: Artifact, preview: results.Preview) -> None:
    """One query result: its first rows (results.PREVIEW_ROWS), its SQL, and a CSV of all its rows."""
    with st.container(border=True):
        st.markdown(f"**{safe_label(art.handle)} · {safe_label(art.title)}**  ·  {art.row_count:,} row(s)" + (" (truncated)" if art.truncated else ""))
        results.result_table(art, preview, key=f"df_{art.id}")
        row = st.container(horizontal=True, vertical_alignment="top")  # one block per result, not three
        with row.expander("SQL"):
            st.code(art.sql or "", language="sql", wrap_lines=True)
            if art.duration_s is not None:
                st.caption(f"Ran in {art.duration_s:.3f} s")
        if not isinstance(preview, str):
            results.download_button(
                art,
                label="CSV",
                file_name=f"{art.handle}-{art.title[:40].strip().replace(' ', '_') or 'result'}.csv",
                key=f"csv_{art.id}",
                container=row,
            )


_FOCUS_MESSAGE = "_focus_message"  # session_state: the message a lineage link opened the thread at


def _open_at(thread_id: int | None, message_id: int | None) -> None:
    """Open a thread (the source or a fork) scrolled to one of its messages."""
    if thread_id is None:
        return
    state.open_thread(thread_id)
    st.session_state[_FOCUS_MESSAGE] = message_id
    st.rerun()


def _scroll_here(msg: Message) -> None:
    """Mark the message a lineage link points at and scroll the page to it (once)."""
    st.session_state.pop(_FOCUS_MESSAGE, None)
    st.caption(f":material/my_location: Message #{msg.id}: the fork point you came from.")
    with st.container(key=f"focus-{msg.id}", height=1, border=False):
        # The page scrolls to this marker; a constant script of ours, nothing from data.
        components.html(
            "<script>const el = window.parent.document.querySelector('.st-key-focus-%d');"
            "if (el) el.scrollIntoView({block: 'start', behavior: 'instant'});</script>" % msg.id,
            height=0,
        )


def _fork_links(msg: Message, forks: list) -> None:
    """Under a message other threads were forked from: a link to each fork."""
    row = st.container(horizontal=True, vertical_alignment="center")
    row.caption(f":material/call_split: Forked here into {len(forks)} thread(s):", width="content")
    for f in forks:
        if row.button(safe_label(f.title), key=f"fork_link_{msg.id}_{f.thread_id}", type="tertiary"):
            _open_at(f.thread_id, msg.id)


_EDITING = "_editing_message"  # session_state: id of the question whose edit box is open


def _edit_box(msg: Message, thread_id: int) -> None:
    """Edit a past question and resend it: a new branch from the same place; the old one stays."""
    text = st.text_area("Edit the question", value=msg.content, key=f"edit_text_{msg.id}", label_visibility="collapsed")
    row = st.container(horizontal=True)
    if row.button("Send as a new branch", key=f"edit_send_{msg.id}", icon=":material/send:", type="primary"):
        try:
            with open_session() as session:
                runs.edit_question(session=session, thread_id=thread_id, message_id=msg.id, content=text)
        except ServiceError as exc:
            state.flash(safe_label(str(exc)), "error")
        else:
            st.session_state.pop(_EDITING, None)
            worker.wake_worker()
        st.rerun()
    if row.button("Cancel", key=f"edit_cancel_{msg.id}", type="tertiary"):
        st.session_state.pop(_EDITING, None)
        st.rerun()


def _switch(thread_id: int, message_id: int) -> None:
    with open_session() as session:
        threads_svc.switch_branch(session=session, thread_id=thread_id, message_id=message_id)
    st.rerun()


def _branch_nav(row, msg: Message, thread_id: int, branches: threads_svc.Siblings) -> None:
    """‹ n/m ›: step to the previous or next branch at this message (its siblings written in this
    thread); the head moves to that branch's newest answer. Nothing runs."""
    i, n = branches.index, branches.count
    if row.button("‹", key=f"branch_prev_{msg.id}", type="tertiary", disabled=i == 0, help="Previous branch"):
        _switch(thread_id, branches.ids[i - 1])
    row.caption(f"{i + 1}/{n}", width="content")
    if row.button("›", key=f"branch_next_{msg.id}", type="tertiary", disabled=i == n - 1, help="Next branch"):
        _switch(thread_id, branches.ids[i + 1])
    if msg.thread_id == thread_id:  # a branch this thread wrote can be deleted; the others stay whole
        with row.popover("Delete branch", icon=":material/delete:", type="tertiary"):
            st.caption("Deletes this branch from here down: its questions, answers and results. Other branches and forks stay whole.")
            if st.button("Delete this branch", key=f"delete_branch_{msg.id}", type="primary"):
                try:
                    with open_session() as session:
                        threads_svc.delete_branch(session=session, thread_id=thread_id, message_id=msg.id)
                except ServiceError as exc:
                    state.flash(safe_label(str(exc)), "error")
                else:
                    state.flash("Deleted the branch; the thread shows the branch before it.", "info")
                st.rerun()


def _message_footer(msg: Message, thread_id: int, branches: threads_svc.Siblings | None = None, *, can_branch: bool = False) -> None:
    # One horizontal container (one block), not st.columns (three): drawn for every message.
    row = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    if branches is not None and branches.count > 1:
        _branch_nav(row, msg, thread_id, branches)
    if msg.role == Role.user and st.session_state.get(_EDITING) != msg.id:
        if row.button("Edit", key=f"edit_{msg.id}", icon=":material/edit:", type="tertiary", disabled=not can_branch,
                      help="Change this question and send it as a new branch; this branch stays"):
            st.session_state[_EDITING] = msg.id
            st.rerun()
    if msg.role == Role.assistant and MessageStatus(msg.status).answered:
        if row.button("Regenerate", key=f"regen_{msg.id}", icon=":material/autorenew:", type="tertiary", disabled=not can_branch,
                      help="Answer this question again as a new branch; this answer stays"):
            try:
                with open_session() as session:
                    runs.regenerate(session=session, thread_id=thread_id, message_id=msg.id)
            except ServiceError as exc:
                state.flash(safe_label(str(exc)), "error")
            worker.wake_worker()
            st.rerun()
    if row.button("Fork from here", key=f"fork_{msg.id}", icon=":material/call_split:", type="tertiary"):
        with open_session() as session:
            fork = threads_svc.fork_thread(session=session, thread_id=thread_id, message_id=msg.id)
        state.open_thread(fork.id)
        if msg.role == Role.user:  # forked at a question: open it for editing (or answer it as is)
            st.session_state[_EDITING] = msg.id
            state.flash(f"Forked into “{safe_label(fork.title)}”. Edit the question and send it, or answer it as is; the original thread is unchanged.", "info")
        else:
            state.flash(f"Forked into “{safe_label(fork.title)}”. Ask a different question here; the original thread is unchanged.", "info")
        st.rerun()
    if msg.role == Role.assistant and msg.duration_s is not None:
        meta = f"#{msg.id} · {msg.duration_s:.1f} s"
        if msg.model_name:
            meta += f" · {safe_label(msg.model_name)}"
        if msg.input_tokens is not None or msg.output_tokens is not None:
            meta += f" · {msg.input_tokens or 0:,} tokens in, {msg.output_tokens or 0:,} out"
        row.caption(meta, width="content")
    else:
        row.caption(f"#{msg.id}", width="content")
