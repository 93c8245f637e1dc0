"""A long thread draws its last messages only, with "Show earlier" (AppTest, real SQLite store)."""

from __future__ import annotations

import time

from test_ui import app, create_workspace

from cfo_desk.services.session import open_session
from cfo_desk.services.threads import create_thread, touch_thread
from cfo_desk.storage.models import Message, Role
from cfo_desk.ui.chat import SHOW_LAST_MESSAGES


def _long_thread(ws_id: int, turns: int) -> int:
    with open_session() as session:
        thread = create_thread(session=session, workspace_id=ws_id, title="Long")
        parent = None
        for i in range(turns):
            for role, text in ((Role.user, f"Question {i}"), (Role.assistant, f"Answer {i}")):
                msg = Message(workspace_id=ws_id, parent_id=parent, role=role, content=text, thread_id=thread.id)
                session.add(msg)
                session.flush()
                parent = msg.id
        touch_thread(session=session, thread=thread, head_message_id=parent)
        session.commit()
        return thread.id


def _drawn(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith(("Question ", "Answer "))]


def test_a_long_thread_shows_its_last_messages_and_earlier_ones_on_request():
    at = app()
    create_workspace(at, "Long")
    thread_id = _long_thread(at.session_state["ws_id"], 500)  # 1,000 messages
    at.session_state["thread_id"] = thread_id
    started = time.perf_counter()
    at.run()
    first_run_s = time.perf_counter() - started
    assert not at.exception, at.exception
    drawn = _drawn(at)
    assert len(drawn) == SHOW_LAST_MESSAGES and drawn[-1] == "Answer 499" and drawn[0] == f"Question {500 - SHOW_LAST_MESSAGES // 2}"
    assert "960 earlier message(s) of this thread are not shown." in [c.value for c in at.caption]
    at.button(key=f"show_earlier_{thread_id}").click().run()
    assert len(_drawn(at)) == 2 * SHOW_LAST_MESSAGES
    print(f"1,000-message thread: first draw {first_run_s:.2f} s (AppTest, server side)")
