"""The sidebar: workspace picker (create, rename, delete), file upload, datasets, threads."""

from __future__ import annotations

import threading

import streamlit as st
from streamlit.runtime.scriptrunner import RerunException, StopException, add_script_run_ctx, get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

from cfo_desk.services import datasets as datasets_svc
from cfo_desk.services import runs, samples, threads as threads_svc, workspaces as workspaces_svc
from cfo_desk.services.errors import ServiceError
from cfo_desk.services.session import open_session
from cfo_desk.ui import state
from cfo_desk.ui.format import human_bytes, safe_code, safe_label, safe_markdown, short_hash

UPLOAD_TYPES = ["csv", "tsv", "txt", "xlsx", "xlsm"]


def render() -> None:
    """Draw the whole sidebar for the current workspace."""
    with st.sidebar:
        st.markdown("### :material/finance: CFO Desk")
        with open_session() as session:
            all_ws = workspaces_svc.list_workspaces(session=session)
        ws_id = state.current_workspace_id()
        if problem := state.link_problem({w.id for w in all_ws}):
            state.flash(problem, "warning")
        if ws_id not in {w.id for w in all_ws}:
            ws_id = all_ws[0].id if all_ws else None
            state.open_workspace(ws_id)
        _workspace_picker(all_ws, ws_id)
        if ws_id is None:
            return
        st.divider()
        _uploader(ws_id)
        _datasets(ws_id)
        st.divider()
        _threads(ws_id)


def _workspace_picker(all_ws, ws_id: int | None) -> None:
    if all_ws:
        names = {w.id: w.name for w in all_ws}
        # The key changes with the names, so a rename shows at once (a widget keeps its old labels otherwise).
        pick_key = f"ws_pick_{ws_id}_{abs(hash(tuple(names.items())))}"
        chosen = st.selectbox("Workspace", options=list(names), index=list(names).index(ws_id), format_func=names.get, key=pick_key)
        if chosen != ws_id:
            state.open_workspace(chosen)
            st.rerun()
    else:
        st.info("No workspace yet. Load the sample, or create one for your own files.")
        if st.button("Load sample workspace", type="primary", icon=":material/auto_awesome:", width="stretch", key="load_sample"):
            with st.spinner("Creating the sample workspace…"), open_session() as session:
                ws = samples.load_sample_workspace(session=session)
            state.open_workspace(ws.id)
            state.flash(f"Loaded “{safe_label(ws.name)}”: customers, subscriptions, orders and marketing spend. Try a sample question.")
            st.rerun()

    # Keyed: an unkeyed popover's open state follows its position, so after the first workspace is
    # created (the sample button above it goes away) "Manage workspace" opened by itself.
    with st.popover("New workspace", icon=":material/add:", width="stretch", key="new_ws_popover"):
        with st.form("create_workspace", clear_on_submit=True, border=False):
            name = st.text_input("Name", placeholder="e.g. FY2024 close", key="new_ws_name")
            if st.form_submit_button("Create", type="primary", key="create_ws"):
                try:
                    with open_session() as session:
                        ws = workspaces_svc.create_workspace(session=session, name=name)
                except ServiceError as exc:
                    st.error(safe_label(str(exc)))
                else:
                    state.open_workspace(ws.id)
                    state.flash(f"Created workspace “{safe_label(ws.name)}”. Upload CSV or Excel files below.")
                    st.rerun()
        if all_ws:
            st.button("Load sample workspace", key="sample_again", on_click=_load_sample_again)

    if ws_id is None:
        return
    with st.popover("Manage workspace", icon=":material/settings:", width="stretch", key="manage_ws_popover"):
        with st.form("rename_workspace", border=False):
            current_name = {w.id: w.name for w in all_ws}[ws_id]
            new_name = st.text_input("Rename to", value=current_name, key=f"rename_ws_{ws_id}_{abs(hash(current_name))}")
            if st.form_submit_button("Rename", key="rename_ws"):
                try:
                    with open_session() as session:
                        workspaces_svc.rename_workspace(session=session, workspace_id=ws_id, name=new_name)
                except ServiceError as exc:
                    st.error(safe_label(str(exc)))
                else:
                    st.rerun()
        if st.button("Delete workspace…", icon=":material/delete:", type="secondary", key="delete_ws"):
            st.session_state["_confirm_delete_ws"] = ws_id
    # A flag, not the button's value, keeps the dialog open across reruns until Delete, Cancel or dismiss.
    if st.session_state.get("_confirm_delete_ws") == ws_id:
        _confirm_delete_workspace(ws_id)


def _load_sample_again() -> None:
    with open_session() as session:
        ws = samples.load_sample_workspace(session=session)
    state.open_workspace(ws.id)
    state.flash(f"Loaded “{safe_label(ws.name)}”.")


def _close_delete_dialog() -> None:
    st.session_state.pop("_confirm_delete_ws", None)


@st.dialog("Delete workspace", on_dismiss=_close_delete_dialog)
def _confirm_delete_workspace(ws_id: int) -> None:
    with open_session() as session:
        ws = workspaces_svc.get_workspace(session=session, workspace_id=ws_id)
        c = workspaces_svc.workspace_contents(session=session, workspace_id=ws_id)
    st.markdown(
        f"Delete **{safe_label(ws.name)}** for good? This removes its {c.datasets} dataset(s) and their uploaded files, "
        f"{c.threads} thread(s) with {c.messages} message(s), and {c.artifacts} query result(s): "
        f"{human_bytes(c.bytes_on_disk)} on disk. It cannot be undone."
    )
    left, right = st.columns(2)
    if left.button("Delete", type="primary", width="stretch", key="confirm_delete_ws"):
        with open_session() as session:
            workspaces_svc.delete_workspace(session=session, workspace_id=ws_id)
        _close_delete_dialog()
        state.open_workspace(None)
        state.flash(f"Deleted workspace “{safe_label(ws.name)}”.", "info")
        st.rerun()
    if right.button("Cancel", width="stretch", key="cancel_delete_ws"):
        _close_delete_dialog()
        st.rerun()


# ---------------------------------------------------------------------------------------------
# Uploads


UPLOADS_HANDLED = "_uploads_handled"
"""Session state: the file ids (Streamlit's id of one upload) this session has already taken in."""


def _uploader(ws_id: int) -> None:
    """The sidebar uploader: ingest each newly uploaded file once, then clear the widget.

    Streamlit's fast reruns (`runner.fastReruns`, on by default) stop a running page as soon as
    another rerun is asked for, e.g. a page change while a file is being ingested: the stopped
    run's thread still finishes the ingest, but raises at its next Streamlit call. Nothing after
    the ingest used to happen: the "Loaded" message was lost (seen in chromium) and the widget
    kept its key with the file in it, for any later run that gets the widget's value to take in
    again ("uploaded before. Replace or keep both?"). So the widget is cleared for the next run
    and every file id is recorded as handled before the ingest starts, and the outcomes go into
    lists already in session state (appending to them is no Streamlit call).
    """
    gen = st.session_state.setdefault("_upload_gen", 0)
    files = st.file_uploader(
        "Upload CSV or Excel files",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key=f"uploader_{ws_id}_{gen}",
        help="Each CSV becomes a dataset; each worksheet of a workbook becomes its own dataset.",
    )
    hidden = st.checkbox(
        "Include hidden worksheets",
        key="upload_hidden_sheets",
        help="Workbooks can hide worksheets (lookups, old versions). They are skipped, and named in the"
        " notes, unless this is on.",
    )
    handled: set[str] = st.session_state.setdefault(UPLOADS_HANDLED, set())
    new = [f for f in files or [] if isinstance(f, UploadedFile) and f.file_id not in handled]
    if new:
        msgs = st.session_state.setdefault("_upload_msgs", [])
        pending = st.session_state.setdefault("_pending_uploads", [])
        st.session_state["_upload_gen"] = gen + 1  # the next run draws an empty widget
        with st.spinner("Reading the uploaded file(s)…"):
            for f in new:
                handled.add(f.file_id)
                _ingest_one(ws_id, f.name, f.getvalue(), "ask", pending, msgs, hidden=hidden)
        st.rerun()
    _upload_messages()
    _pending_conflicts(ws_id)


def _ingest_one(
    ws_id: int, name: str, data: bytes, on_conflict: str, pending: list, msgs: list, verb: str = "Loaded", *, hidden: bool = False
) -> None:
    """Ingest one file (``hidden``: also a workbook's hidden worksheets); a same-name conflict goes
    to `pending`, the outcome to `msgs` (both lists kept in session state, appended to without
    Streamlit calls: see `_uploader`)."""
    try:
        with open_session() as session:
            made = datasets_svc.upload_file(
                session=session,
                workspace_id=ws_id,
                filename=name,
                data=data,
                on_conflict=on_conflict,
                include_hidden_sheets=hidden,
                progress=_progress_bar(),
            )
    except datasets_svc.DuplicateUpload:
        pending.append((name, data, hidden))
    except (datasets_svc.IngestError, ServiceError) as exc:
        msgs.append(("error", safe_label(str(exc)), None))
    else:
        for ds in made:
            sheet = f" \\[{safe_label(ds.sheet_name)}\\]" if ds.sheet_name else ""
            text = f"{verb} **{safe_label(ds.source_filename)}**{sheet} as {safe_code(ds.table_name)} ({ds.row_count:,} rows)."
            msgs.append(("success", text, ds.id))


def _progress_bar():
    """A progress callback for one upload: draws a bar in the sidebar on its first report (small
    files finish before any), from the script thread or ingest's watcher thread. Drawing never
    stops the ingest: a run stopped meanwhile (a page change) raises at Streamlit calls, which are
    skipped here (see `_uploader`)."""
    ctx = get_script_run_ctx()
    bar = None

    def report(fraction: float, text: str) -> None:
        nonlocal bar
        try:
            if get_script_run_ctx(suppress_warning=True) is None:
                add_script_run_ctx(threading.current_thread(), ctx)
            if bar is None:
                bar = st.sidebar.progress(0.0)
            bar.progress(max(0.0, min(1.0, fraction)), text=safe_label(text))
        except (Exception, StopException, RerunException):  # noqa: BLE001 - a stopped run: the ingest goes on
            pass

    return report


def _upload_messages() -> None:
    msgs = st.session_state.get("_upload_msgs", [])
    for i, (kind, text, dataset_id) in enumerate(msgs):
        getattr(st, kind)(text)
        if dataset_id is not None:
            _ingest_notes(dataset_id, key=f"dos_{i}")
    if msgs and st.button("Dismiss", key="dismiss_uploads", icon=":material/close:", width="stretch"):
        st.session_state.pop("_upload_msgs", None)
        st.rerun()


def _ingest_notes(dataset_id: int, key: str) -> None:
    """What ingest noticed about a fresh dataset (folded), and the date-order switch when assumed."""
    with open_session() as session:
        try:
            ds = datasets_svc.get_dataset(session=session, dataset_id=dataset_id)
        except ServiceError:
            return
    notes = ds.notes
    if notes:
        with st.expander(f"What ingest noticed ({len(notes)})", expanded=bool(ds.date_order)):
            st.markdown("\n".join(f"- {safe_markdown(n)}" for n in notes))
    if ds.date_order:
        _date_order_switch(ds, key)


def _date_order_switch(ds, key: str) -> None:
    dataset_id = ds.id
    cols = safe_label(", ".join(ds.ambiguous_date_columns)) or "dates"
    current = ds.date_order or "MDY"
    other = "MDY" if current == "DMY" else "DMY"
    label = {"DMY": "day/month (31/12)", "MDY": "month/day (12/31)"}
    st.caption(f"{cols} read as {label[current]}: every day was ≤ 12, so the order was assumed.")
    if st.button(f"Read as {label[other]} instead", key=key):
        try:
            with open_session() as session:
                datasets_svc.set_date_order(session=session, dataset_id=dataset_id, date_order=other)
        except ServiceError as exc:  # e.g. the workspace is busy with an upload in another process
            st.error(str(exc))
            return
        state.flash(f"Re-read {safe_label(ds.source_filename)} with {label[other]} dates.")
        st.rerun()


def _pending_conflicts(ws_id: int) -> None:
    pending = st.session_state.get("_pending_uploads") or []
    if not pending:
        return
    name, data, hidden = pending[0]
    with st.container(border=True):
        with open_session() as session:
            same = [d for d in datasets_svc.list_datasets(session=session, workspace_id=ws_id) if d.source_filename == name]
        target = ", ".join(safe_code(d.table_name) for d in datasets_svc.replace_targets(same))
        st.warning(f"**{safe_label(name)}** was uploaded before. Replace {target} with the new file, or keep both?")
        a, b, c = st.columns(3)
        choice = None
        if a.button("Replace", key="conflict_replace", type="primary"):
            choice = "replace"
        if b.button("Keep both", key="conflict_keep"):
            choice = "keep_both"
        if c.button("Skip", key="conflict_skip"):
            choice = "skip"
    if choice:
        pending.pop(0)  # in place, before the ingest (see `_uploader`)
        if choice != "skip":
            msgs = st.session_state.setdefault("_upload_msgs", [])
            verb = "Replaced" if choice == "replace" else "Loaded"
            _ingest_one(ws_id, name, data, choice, pending, msgs, verb, hidden=hidden)
        st.rerun()


# ---------------------------------------------------------------------------------------------
# Datasets and threads


def _datasets(ws_id: int) -> None:
    with open_session() as session:
        rows = datasets_svc.list_datasets(session=session, workspace_id=ws_id)
    if not rows:
        st.caption("No datasets yet.")
        return
    with st.expander(f"Datasets ({len(rows)})", expanded=True):
        for d in rows:
            # No unsafe_allow_html: the file and sheet names are untrusted (html.escape leaves Markdown alone).
            source = safe_label(d.source_filename + (f" [{d.sheet_name}]" if d.sheet_name else ""))
            st.markdown(f"{safe_code(d.table_name)} · {d.row_count:,} rows  \n:small[{source} · {short_hash(d.sha256)}]")


def _threads(ws_id: int) -> None:
    st.markdown("**Threads**")
    if st.button("New thread", icon=":material/add_comment:", width="stretch", key="new_thread"):
        state.open_thread(None)  # the thread is created with its first question: no empty threads pile up
        state.go_to_chat()
    query = st.text_input(
        "Search threads", key=f"thread_search_{ws_id}", placeholder="Search titles and messages", label_visibility="collapsed",
        icon=":material/search:",
    )
    archived = st.toggle("Archived threads", key=f"thread_archived_{ws_id}")
    limit_key = f"thread_limit_{ws_id}"
    limit = st.session_state.get(limit_key, threads_svc.PAGE_SIZE)
    with open_session() as session:
        rows = threads_svc.list_threads(session=session, workspace_id=ws_id, query=query, archived=archived, limit=limit)
        total = threads_svc.count_threads(session=session, workspace_id=ws_id, query=query, archived=archived)
        busy = runs.thread_ids_with_open_runs(session=session, thread_ids=[t.id for t in rows])
    if not rows:
        st.caption("No thread matches." if query else ("No archived threads." if archived else "No threads yet: ask a question."))
    current = state.current_thread_id()
    for t in rows:
        icon = ":material/call_split:" if t.forked_from_thread_id else ":material/chat_bubble:"
        if t.id in busy:
            icon = ":material/progress_activity:"  # a run is going (or waiting) in this thread
        if st.button(safe_label(t.title), key=f"thread_{t.id}", icon=icon, type="primary" if t.id == current else "tertiary", width="stretch"):
            state.open_thread(t.id)
            state.go_to_chat()
    if total > len(rows):
        if st.button(f"Show more ({total - len(rows):,} more)", key=f"more_threads_{ws_id}", type="tertiary", width="stretch"):
            st.session_state[limit_key] = limit + threads_svc.PAGE_SIZE
            st.rerun()

