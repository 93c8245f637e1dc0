"""The sidebar's thread list (AppTest): paging past 50 threads, search by title and message text,
archive and unarchive."""

from __future__ import annotations

from test_ui import app, create_workspace

from cfo_desk.services.session import open_session
from cfo_desk.services.threads import PAGE_SIZE, create_thread, touch_thread
from cfo_desk.storage.models import Message, Role


def _threads(at) -> list[str]:
    return [b.label for b in at.sidebar.button if b.key and b.key.startswith("thread_")]


def test_paging_search_and_archive():
    at = app()
    create_workspace(at, "Many")
    ws_id = at.session_state["ws_id"]
    with open_session() as session:
        for i in range(PAGE_SIZE + 5):
            create_thread(session=session, workspace_id=ws_id, title=f"Thread {i:02d}")
        budget = create_thread(session=session, workspace_id=ws_id, title="Quarterly review")
        msg = Message(workspace_id=ws_id, role=Role.user, content="What is the 2025 budget variance?", thread_id=budget.id)
        session.add(msg)
        session.flush()
        touch_thread(session=session, thread=budget, head_message_id=msg.id)
        session.commit()
        budget_id = budget.id
    at.run()
    assert len(_threads(at)) == PAGE_SIZE
    at.sidebar.button(key=f"more_threads_{ws_id}").click().run()
    assert len(_threads(at)) == PAGE_SIZE + 6

    at.sidebar.text_input(key=f"thread_search_{ws_id}").set_value("BUDGET variance").run()  # message text, any case
    assert _threads(at) == ["Quarterly review"]
    at.sidebar.text_input(key=f"thread_search_{ws_id}").set_value("").run()

    at.sidebar.button(key=f"thread_{budget_id}").click().run()
    at.button(key=f"archive_thread_{budget_id}").click().run()
    assert "Quarterly review" not in _threads(at)
    at.sidebar.toggle(key=f"thread_archived_{ws_id}").set_value(True).run()
    assert _threads(at) == ["Quarterly review"]
    at.button(key=f"archive_thread_{budget_id}").click().run()  # now "Unarchive thread"
    assert _threads(at) == []
    at.sidebar.toggle(key=f"thread_archived_{ws_id}").set_value(False).run()
    assert "Quarterly review" in _threads(at)
