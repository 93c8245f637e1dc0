"""The frame every page shares: the sidebar, the page body, then the URL kept in step.

Pages call `frame(render)` instead of app.py drawing the sidebar around `page.run()`: Streamlit
1.67's AppTest keeps only the page's own elements on reruns, so a sidebar drawn by the entry script
vanished from tests after the first interaction. Drawn from the page, it behaves the same in the
browser and in AppTest.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from cfo_desk.services import worker
from cfo_desk.ui import sidebar, state


@st.cache_resource(show_spinner=False)
def _run_worker() -> worker.RunWorker:
    """The process's background worker, started by the first page any session draws. It executes
    queued runs (and recovers those a dead process left) whether or not a page is open."""
    return worker.start_worker()


def frame(render: Callable[[], None]) -> None:
    """Start the run worker (once per process), draw the sidebar, then the page body, then mirror
    the open workspace/thread into the URL."""
    if not _run_worker().alive:  # stopped (tests shut it down between runs): start a new one
        _run_worker.clear()
        _run_worker()
    state.follow_url()  # Back/Forward or an edited address lands on the place it names
    sidebar.render()
    render()
    state.sync_url()
