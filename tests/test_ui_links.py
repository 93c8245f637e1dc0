"""Deep links and browser history (AppTest): the URL names the workspace and thread, a link or a
Back/Forward step lands on the place it names, and a bad or foreign link says so."""

from __future__ import annotations

from agent_script import sql_script
from streamlit.testing.v1 import AppTest
from test_ui import APP, app, create_workspace, settle, texts

from cfo_desk.agent.core import use_model


def _ask(at: AppTest, question: str) -> None:
    at.button(key="new_thread").click().run()
    at.chat_input[0].set_value(question).run()
    settle(at)


def test_links_back_forward_and_bad_links():
    use_model(sql_script([], lambda r: {"answer_markdown": "ok"}))
    at = app()
    create_workspace(at, "One")
    _ask(at, "First question")
    first = dict(at.query_params)
    assert first["thread"] and first["ws"]  # the URL names the thread from the moment it exists
    _ask(at, "Second question")
    second = dict(at.query_params)
    assert second["thread"] != first["thread"]

    # Back: the browser puts the earlier URL back and reruns the page; the page follows it.
    at.query_params.clear()
    at.query_params.update({k: v[0] if isinstance(v, list) else v for k, v in first.items()})
    at.run()
    assert not at.exception, at.exception
    assert any(t.value == "First question" for t in at.title)
    assert dict(at.query_params) == first

    # A reload of a link in a fresh session lands on the same thread.
    fresh = AppTest.from_file(APP, default_timeout=60)
    fresh.query_params.update({k: v[0] if isinstance(v, list) else v for k, v in second.items()})
    fresh.run()
    assert any(t.value == "Second question" for t in fresh.title)

    # A link to a workspace that doesn't exist says so.
    bad = AppTest.from_file(APP, default_timeout=60)
    bad.query_params.update({"ws": "987654"})
    bad.run()
    assert "The link names workspace 987654, which doesn't exist" in "\n".join(w.value for w in bad.warning)

    # A thread of another workspace: said so, not opened.
    create_workspace(at, "Two")
    ws_two = at.session_state["ws_id"]
    other = AppTest.from_file(APP, default_timeout=60)
    other.query_params.update({"ws": str(ws_two), "thread": first["thread"] if isinstance(first["thread"], str) else first["thread"][0]})
    other.run()
    assert "isn't in this workspace" in texts(other)
    assert not any(t.value == "First question" for t in other.title)
