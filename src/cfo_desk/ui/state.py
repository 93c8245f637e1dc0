"""Which workspace and thread are open.

Session state is the source of truth; it is mirrored into the URL (?ws=..&thread=..) so a reload
or a bookmark reopens the same place (page navigation clears query params, so they are re-written
on every run by `sync_url`).
"""

from __future__ import annotations

import streamlit as st


def _int_param(name: str) -> int | None:
    value = st.query_params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_SYNCED = "_url_synced"  # session_state: the query params this session last wrote into the URL


def _init() -> None:
    if "ws_id" not in st.session_state:
        st.session_state["ws_id"] = _int_param("ws")
        st.session_state["thread_id"] = _int_param("thread")
        st.session_state["_from_link"] = st.session_state["ws_id"] is not None


def follow_url() -> None:
    """Adopt the URL's place when it changed from outside this session's own writes: browser
    Back/Forward (each place this app writes is a history entry), or an edited address. A URL
    without `ws` (a page switch clears the query) changes nothing. Call once per run, first."""
    _init()
    wanted = dict(st.query_params)
    if "ws" in wanted and wanted != st.session_state.get(_SYNCED, wanted):
        st.session_state["ws_id"] = _int_param("ws")
        st.session_state["thread_id"] = _int_param("thread")
        st.session_state["_from_link"] = True


def link_problem(known_workspaces: set[int]) -> str | None:
    """When the place came from a link (a reload, a bookmark, Back/Forward) naming a workspace that
    doesn't exist (any more), one sentence saying so; None otherwise. Checked once per link."""
    if not st.session_state.pop("_from_link", False):
        return None
    ws = st.session_state.get("ws_id")
    if ws is not None and ws not in known_workspaces:
        return f"The link names workspace {ws}, which doesn't exist (it was deleted, or the link is wrong). Showing another workspace instead."
    return None


def current_workspace_id() -> int | None:
    """The open workspace's id, or None."""
    _init()
    return st.session_state["ws_id"]


def current_thread_id() -> int | None:
    """The open thread's id, or None."""
    _init()
    return st.session_state["thread_id"]


def open_workspace(workspace_id: int | None) -> None:
    """Open a workspace (closing any thread)."""
    _init()
    if st.session_state["ws_id"] != workspace_id:
        st.session_state["thread_id"] = None
    st.session_state["ws_id"] = workspace_id


def open_thread(thread_id: int | None) -> None:
    """Open a thread of the current workspace (None: no thread open)."""
    _init()
    st.session_state["thread_id"] = thread_id


def url_params() -> dict[str, str]:
    """The query params that reopen the current place."""
    params = {}
    if current_workspace_id() is not None:
        params["ws"] = str(current_workspace_id())
        if current_thread_id() is not None:
            params["thread"] = str(current_thread_id())
    return params


def sync_url() -> None:
    """Write the current place into the URL (a new browser history entry when it changed)."""
    wanted = url_params()
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)
    st.session_state[_SYNCED] = wanted


def go_to_chat() -> None:
    """Switch to the chat page, keeping the current place."""
    st.switch_page("views/chat.py", query_params=url_params())


def flash(message: str, kind: str = "success") -> None:
    """Queue a message shown once on the next run (kind: success, info, warning, error)."""
    st.session_state.setdefault("_flash", []).append((kind, message))


def show_flashes() -> None:
    """Show and clear queued messages."""
    for kind, message in st.session_state.pop("_flash", []):
        getattr(st, kind)(message)
