"""Branches inside a thread on the chat page (AppTest): edit and resend, regenerate, ‹n/m› switch."""

from __future__ import annotations

import itertools

from agent_script import output_call, scripted
from pydantic_ai.messages import ModelRequest, ModelResponse, UserPromptPart
from test_ui import app, create_workspace, settle, texts

from cfo_desk.agent.core import use_model


def _answering_model(seen_prompts: list[list[str]]):
    counter = itertools.count(1)

    def plan(messages, info):
        prompts = [p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, UserPromptPart)]
        seen_prompts.append(prompts)
        return ModelResponse(parts=[output_call(info, "FinalAnswer", {"answer_markdown": f"Answer {next(counter)} to: {prompts[-1]}"})])

    return scripted(plan)


def _branch_label(at) -> list[str]:
    return [c.value for c in at.caption if "/" in c.value and c.value.replace("/", "").isdigit()]


def test_edit_regenerate_and_switch_branches():
    seen: list[list[str]] = []
    use_model(_answering_model(seen))
    at = app()
    create_workspace(at, "Branches")
    at.chat_input[0].set_value("Revenue in December?").run()
    settle(at)
    assert "Answer 1 to: Revenue in December?" in texts(at)

    # Edit the question and resend: a new branch, answered; the old one is one click away.
    (edit,) = [b for b in at.button if b.key and b.key.startswith("edit_") and not b.key.startswith("edit_send")]
    edit.click().run()
    at.text_area(key=next(t.key for t in at.text_area if t.key.startswith("edit_text_"))).set_value("Revenue in November?").run()
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("edit_send_"))).click().run()
    settle(at)
    assert not at.exception, at.exception
    shown = texts(at)
    assert "Answer 2 to: Revenue in November?" in shown and "Answer 1 to" not in shown
    assert _branch_label(at) == ["2/2"]  # on the question
    assert seen[-1] == ["Revenue in November?"]  # the new branch's history holds no trace of the old one

    # ‹ back to the first branch: its question and answer, nothing re-run.
    requests = len(seen)
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("branch_prev_"))).click().run()
    shown = texts(at)
    assert "Answer 1 to: Revenue in December?" in shown and "Answer 2" not in shown
    assert _branch_label(at) == ["1/2"] and len(seen) == requests

    # Regenerate the answer: a sibling answer; ‹1/2› on the answer switches between them.
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("regen_"))).click().run()
    settle(at)
    shown = texts(at)
    assert "Answer 3 to: Revenue in December?" in shown and "Answer 1 to" not in shown
    assert sorted(_branch_label(at)) == ["1/2", "2/2"]  # question: branch 1 of 2; answer: 2 of 2

    # A follow-up continues the branch shown; its history is that branch's.
    at.chat_input[0].set_value("And January?").run()
    settle(at)
    assert seen[-1] == ["Revenue in December?", "And January?"]


def test_fork_from_a_question_opens_it_for_editing():
    seen: list[list[str]] = []
    use_model(_answering_model(seen))
    at = app()
    create_workspace(at, "Forks")
    at.chat_input[0].set_value("Churn in 2024?").run()
    settle(at)
    source_thread = at.session_state["thread_id"]
    [b for b in at.button if b.key and b.key.startswith("fork_")][0].click().run()  # fork at the question
    assert at.session_state["thread_id"] != source_thread
    (box,) = [t for t in at.text_area if t.key.startswith("edit_text_")]  # the question, open for editing
    assert box.value == "Churn in 2024?"
    box.set_value("Churn in 2024, annual contracts only?").run()
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("edit_send_"))).click().run()
    settle(at)
    assert not at.exception, at.exception
    assert "Answer 2 to: Churn in 2024, annual contracts only?" in texts(at)
    assert seen[-1] == ["Churn in 2024, annual contracts only?"]
    assert _branch_label(at) == ["2/2"]  # the question it was forked with is the fork's branch 1

    at.sidebar.button(key=f"thread_{source_thread}").click().run()  # the source is unchanged
    assert "Answer 1 to: Churn in 2024?" in texts(at) and "annual contracts" not in texts(at)
    assert _branch_label(at) == []


def test_lineage_links_both_ways():
    use_model(_answering_model([]))
    at = app()
    create_workspace(at, "Lineage")
    at.chat_input[0].set_value("MRR in December?").run()
    settle(at)
    source_thread = at.session_state["thread_id"]
    [b for b in at.button if b.key and b.key.startswith("fork_")][-1].click().run()  # fork at the answer
    fork_thread = at.session_state["thread_id"]
    assert "MRR in December? · fork 1" in [t.value for t in at.title]

    at.button(key="lineage_source").click().run()  # the fork names its source and message: click → there
    assert at.session_state["thread_id"] == source_thread
    assert any("the fork point you came from" in c.value for c in at.caption)
    (link,) = [b for b in at.button if b.key and b.key.startswith("fork_link_")]  # the source lists its fork there
    assert link.label == "MRR in December? · fork 1"
    link.click().run()
    assert at.session_state["thread_id"] == fork_thread


def test_delete_a_branch_keeps_the_other():
    use_model(_answering_model([]))
    at = app()
    create_workspace(at, "Delete")
    at.chat_input[0].set_value("Burn rate?").run()
    settle(at)
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("regen_"))).click().run()
    settle(at)
    assert "Answer 2 to: Burn rate?" in texts(at) and _branch_label(at) == ["2/2"]
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("delete_branch_"))).click().run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "Answer 1 to: Burn rate?" in shown and "Answer 2" not in shown  # the other branch, whole
    assert _branch_label(at) == []
