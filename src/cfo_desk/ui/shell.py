"""The frame every page shares: the sidebar, the page body, then the URL kept in step.

Pages call `frame(render)` instead of app.py drawing the sidebar around `page.run()`: Streamlit
1.67's AppTest keeps only the page's own elements on reruns, so a sidebar drawn by the entry script
vanished from tests after the first interaction. Drawn from the page, it behaves the same in the
browser and in AppTest.
"""

from __future__ import annotations

from collections.abc import Callable

from cfo_desk.ui import sidebar, state


def frame(render: Callable[[], None]) -> None:
    """Draw the sidebar, then the page body, then mirror the open workspace/thread into the URL."""
    sidebar.render()
    render()
    state.sync_url()
