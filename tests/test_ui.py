"""The app through Streamlit's AppTest: the analyst's journey with the model scripted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from agent_script import result_content, sql_script
from streamlit.testing.v1 import AppTest

from cfo_desk.agent.core import use_model

APP = str(Path(__file__).resolve().parents[1] / "app.py")

REVENUE_CSV = b"month;region;revenue\n2024-10-01;EMEA;1.200,50\n2024-11-01;EMEA;1.300,25\n2024-12-01;EMEA;1.450,00\n2024-12-01;APAC;800,00\n"


def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    return at.run()


def settle(at: AppTest, timeout_s: float = 30.0) -> AppTest:
    """Wait until the background worker has no open run left in the store, then rerun the page
    (in a browser the page's live fragment does that rerun by itself)."""
    from cfo_desk.services.session import open_session
    from cfo_desk.storage.models import Run, RunStatus
    from sqlmodel import select

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open_session() as session:
            if not session.exec(select(Run.id).where(Run.status.in_([RunStatus.queued, RunStatus.running]))).first():
                break
        time.sleep(0.05)
    else:
        raise AssertionError("runs still open after the timeout")
    return at.run()


def create_workspace(at: AppTest, name: str) -> None:
    """Create and open a workspace through the sidebar's New workspace form."""
    at.text_input(key="new_ws_name").set_value(name)
    at.button(key="create_ws").click().run()
    assert not at.exception, at.exception


def texts(at: AppTest) -> str:
    """Everything the main area shows as markdown, captions, errors, infos."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error] + [i.value for i in at.info] + [w.value for w in at.warning]
    return "\n".join(str(p) for p in parts)


def answer_with_total(returns):
    rows = result_content(returns[-1])["rows"]
    return {"answer_markdown": f"December 2024 revenue was **{rows[0][0]:,.2f} EUR**.", "queries": ["q1"]}


def test_no_model_configured_says_what_to_set():
    at = app()
    assert not at.exception
    create_workspace(at, "Acme")
    assert "To ask questions, set CFO_DESK_MODEL" in texts(at)
    assert at.chat_input[0].disabled


def test_journey_create_upload_ask_fork(tmp_path):
    at = app()
    assert not at.exception, at.exception
    assert at.button(key="load_sample")  # an empty install offers the sample

    create_workspace(at, "Acme FP&A")
    assert not at.exception, at.exception
    assert at.sidebar.selectbox[0].value is not None

    at.sidebar.file_uploader[0].set_value(("revenue.csv", REVENUE_CSV, "text/csv")).run()
    assert not at.exception, at.exception
    sidebar_text = "\n".join(s.value for s in at.sidebar.success)
    assert "as `revenue` (4 rows)" in sidebar_text

    use_model(sql_script(["SELECT sum(revenue) AS total FROM revenue WHERE month = DATE '2024-12-01'"], answer_with_total))
    at.button(key="new_thread").click().run()
    at.chat_input[0].set_value("What was revenue in December 2024?").run()
    settle(at)
    assert not at.exception, at.exception
    shown = texts(at)
    assert "December 2024 revenue was **2,250.00 EUR**." in shown
    assert at.dataframe[0].value["total"].tolist() == [pytest.approx(2250.0)]
    assert any("sum(revenue)" in c.value for c in at.code)
    assert "revenue.csv (sha256" in shown

    # Fork from the answer, then ask something else in the fork.
    fork_buttons = [b for b in at.button if b.key and b.key.startswith("fork_")]
    assert len(fork_buttons) == 2  # question and answer
    fork_buttons[-1].click().run()
    assert not at.exception, at.exception
    assert "Forked from" in texts(at)
    assert "December 2024 revenue was" in texts(at)  # the fork shows the history

    use_model(sql_script(["SELECT count(*) AS n FROM revenue"], lambda r: {"answer_markdown": "There are **4** revenue rows."}))
    at.chat_input[0].set_value("How many rows?").run()
    settle(at)
    assert "There are **4** revenue rows." in texts(at)
    assert "December 2024 revenue was" in texts(at)

    # Back in the source thread, the fork's turn does not appear.
    source = [b for b in at.sidebar.button if b.key and b.key.startswith("thread_") and "fork" not in b.label]
    source[0].click().run()
    assert "December 2024 revenue was" in texts(at)
    assert "There are **4** revenue rows." not in texts(at)


def test_failed_turn_offers_retry():
    use_model(sql_script([], {"answer_markdown": "unused"}))
    at = app()
    create_workspace(at, "W")

    def broken(messages, info):
        raise RuntimeError("boom")

    from agent_script import scripted

    use_model(scripted(broken))
    at.run()
    at.chat_input[0].set_value("Anything?").run()
    settle(at)
    assert not at.exception, at.exception
    assert any("boom" in e.value for e in at.error)
    retry = [b for b in at.button if b.key and b.key.startswith("retry_")]
    assert retry
    use_model(sql_script(["SELECT 1 AS one"], {"answer_markdown": "Recovered."}))
    retry[0].click().run()
    settle(at)
    assert "Recovered." in texts(at)


def test_duplicate_upload_asks_replace_or_keep_both():
    at = app()
    create_workspace(at, "W")
    at.sidebar.file_uploader[0].set_value(("revenue.csv", REVENUE_CSV, "text/csv")).run()
    at.sidebar.file_uploader[0].set_value(("revenue.csv", REVENUE_CSV + b"2025-01-01;EMEA;5,00\n", "text/csv")).run()
    assert any("uploaded before" in w.value for w in at.sidebar.warning)
    at.button(key="conflict_keep").click().run()
    assert not at.exception, at.exception
    assert "as `revenue_2` (5 rows)" in "\n".join(s.value for s in at.sidebar.success)
    at.sidebar.file_uploader[0].set_value(("revenue.csv", REVENUE_CSV, "text/csv")).run()
    at.button(key="conflict_replace").click().run()
    assert "as `revenue` (4 rows)" in "\n".join(s.value for s in at.sidebar.success)


def test_hidden_worksheets_are_skipped_unless_included(tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.title = "Data"
    wb.active.append(["month", "revenue"])
    wb.active.append(["2024-01-01", 100])
    lookup = wb.create_sheet("Lookup")
    lookup.append(["code", "rate"])
    lookup.append(["A", 0.5])
    lookup.sheet_state = "hidden"
    wb.save(tmp_path / "book.xlsx")
    book = (tmp_path / "book.xlsx").read_bytes()

    at = app()
    create_workspace(at, "W")
    at.sidebar.file_uploader[0].set_value(("book.xlsx", book, "application/octet-stream")).run()
    loaded = "\n".join(s.value for s in at.sidebar.success)
    assert "\\[Data\\]" in loaded and "Lookup" not in loaded
    assert "Skipped hidden worksheet 'Lookup' (hidden)" in texts(at)
    at.sidebar.checkbox(key="upload_hidden_sheets").check().run()
    at.sidebar.file_uploader[0].set_value(("book.xlsx", book, "application/octet-stream")).run()
    at.button(key="conflict_replace").click().run()  # the choice keeps the checkbox's value
    assert not at.exception, at.exception
    assert "\\[Lookup\\] as `book_lookup` (1 rows)" in "\n".join(s.value for s in at.sidebar.success)


def test_bad_file_gets_a_specific_error():
    at = app()
    create_workspace(at, "W")
    at.sidebar.file_uploader[0].set_value(("broken.xlsx", b"this is not a workbook", "application/octet-stream")).run()
    assert not at.exception, at.exception
    assert any("broken.xlsx" in e.value for e in at.sidebar.error)


def test_sample_workspace_and_data_page():
    at = app()
    at.button(key="load_sample").click().run()
    assert not at.exception, at.exception
    assert "Sample SaaS company" in at.sidebar.selectbox[0].format_func(at.sidebar.selectbox[0].value)
    at.switch_page("views/data.py").run()
    assert not at.exception, at.exception
    assert at.metric[0].value == "597"  # customers: first dataset by name
    profile = at.dataframe[1].value
    assert set(profile["column"]) >= {"customer_id", "segment"} and "distinct" in profile.columns


def test_data_page_reads_a_column_as_another_type():
    at = app()
    create_workspace(at, "W")
    data = b"code,amount\n00123,10.50\n00456,oops\n"
    at.sidebar.file_uploader[0].set_value(("codes.csv", data, "text/csv")).run()
    at.switch_page("views/data.py").run()
    assert not at.exception, at.exception
    (d,) = [s for s in at.selectbox if s.key and s.key.startswith("type_col_")]
    ds_id = d.key.removeprefix("type_col_")
    d.set_value("code").run()
    at.selectbox(key=f"type_kind_{ds_id}_code").set_value("integer").run()
    at.button(key=f"type_apply_{ds_id}").click().run()
    assert not at.exception, at.exception
    assert "Re-read codes with code as whole numbers." in [s.value for s in at.success]
    assert "Column 'code' read as whole numbers, as set on the Data page" in texts(at)
    assert list(at.dataframe[0].value["code"]) == [123, 456]
    assert at.selectbox(key=f"type_col_{ds_id}").format_func("code") == "code · BIGINT · chosen"
    # Back to automatic: the leading zeros are back.
    at.selectbox(key=f"type_kind_{ds_id}_code").set_value("auto").run()
    at.button(key=f"type_apply_{ds_id}").click().run()
    assert list(at.dataframe[0].value["code"]) == ["00123", "00456"]


def test_newcomer_asks_a_sample_question_in_one_click():
    from cfo_desk.analytics.sample_data import generate, reference_mrr

    sql = "SELECT round(sum(mrr_usd), 2) AS mrr_usd FROM subscriptions WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')"
    use_model(sql_script([sql], lambda r: {"answer_markdown": f"MRR in December 2024 was **${result_content(r[0])['rows'][0][0]:,.2f}**."}))
    at = app()
    at.button(key="load_sample").click().run()
    assert at.button(key="sample_q_0").label == "What was MRR in December 2024?"
    at.button(key="sample_q_0").click().run()
    settle(at)
    assert not at.exception, at.exception
    expected = reference_mrr(generate().subscriptions, 2024, 12)
    assert f"MRR in December 2024 was **${expected:,.2f}**." in texts(at)
    assert [b.label for b in at.sidebar.button if b.key and b.key.startswith("thread_")] == ["What was MRR in December 2024?"]


def test_delete_source_thread_from_the_ui_keeps_the_fork():
    use_model(sql_script(["SELECT 1 AS one"], {"answer_markdown": "First answer."}))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("First question").run()
    settle(at)
    [b for b in at.button if b.key and b.key.startswith("fork_")][-1].click().run()
    assert "Forked from" in texts(at)
    source = [b for b in at.sidebar.button if b.key and b.key.startswith("thread_") and "fork" not in b.label][0]
    source.click().run()
    delete = [b for b in at.button if b.key and b.key.startswith("delete_thread_")][0]
    assert delete.disabled  # nothing goes without the confirmation
    [c for c in at.checkbox if c.key and c.key.startswith("sure_delete_")][0].check().run()
    [b for b in at.button if b.key and b.key.startswith("delete_thread_")][0].click().run()
    assert not at.exception, at.exception
    threads = [b.label for b in at.sidebar.button if b.key and b.key.startswith("thread_")]
    assert threads == ["First question · fork 1"]
    at.sidebar.button(key=[b.key for b in at.sidebar.button if b.key and b.key.startswith("thread_")][0]).click().run()
    assert "First answer." in texts(at) and "First question" in texts(at)


def test_delete_workspace_confirms_and_says_what_goes():
    at = app()
    at.button(key="load_sample").click().run()
    at.button(key="delete_ws").click().run()
    assert not at.exception, at.exception
    shown = texts(at)
    assert "Delete **Sample SaaS company** for good?" in shown and "4 dataset(s)" in shown
    at.button(key="cancel_delete_ws").click().run()
    assert "for good?" not in texts(at) and at.sidebar.selectbox[0].value is not None
    at.button(key="delete_ws").click().run()
    at.button(key="confirm_delete_ws").click().run()
    assert not at.exception, at.exception
    assert at.button(key="load_sample")  # back to the empty install
    assert "Deleted workspace" in "\n".join(i.value for i in at.info)


def test_artifacts_and_settings_pages(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://cfo:s3cret@db.internal/cfo")
    from cfo_desk.config import get_settings

    get_settings.cache_clear()
    from cfo_desk.services.settings import configuration

    shown = dict(configuration())
    assert "s3cret" not in shown["DATABASE_URL"] and shown["CFO_DESK_MODEL"] == "(not set)"
    monkeypatch.delenv("DATABASE_URL")
    get_settings.cache_clear()

    use_model(sql_script(["SELECT 42 AS answer"], {"answer_markdown": "42."}))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("The answer?").run()
    settle(at)
    at.switch_page("views/artifacts.py").run()
    assert not at.exception, at.exception
    assert any("SELECT 42 AS answer" in c.value for c in at.code)
    assert any("For the question: “The answer?”" in c.value for c in at.caption)
    assert at.dataframe[0].value["answer"].tolist() == [42]
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    assert "CFO_DESK_SQL_TIMEOUT" in str(at.table[0].value)


def test_ambiguous_dates_can_be_switched_after_upload():
    at = app()
    create_workspace(at, "W")
    at.sidebar.file_uploader[0].set_value(("bank.csv", b"booked,amount\n03/04/2024,10\n05/06/2024,20\n", "text/csv")).run()
    assert any("every day was ≤ 12" in c.value and "month/day" in c.value for c in at.sidebar.caption)
    at.sidebar.button(key="dos_0").click().run()
    assert not at.exception, at.exception
    at.switch_page("views/data.py").run()
    assert at.dataframe[0].value["booked"].dt.strftime("%Y-%m-%d").tolist() == ["2024-04-03", "2024-06-05"]


def test_fork_from_a_question_offers_to_answer_it():
    use_model(sql_script(["SELECT 1 AS one"], {"answer_markdown": "Answered once."}))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("Q?").run()
    settle(at)
    [b for b in at.button if b.key and b.key.startswith("fork_")][0].click().run()  # fork from the question
    assert "has no answer yet" in "\n".join(w.value for w in at.warning)
    assert at.chat_input[0].disabled
    use_model(sql_script(["SELECT 2 AS two"], {"answer_markdown": "Answered in the fork."}))
    at.button(key="answer_unanswered").click().run()
    settle(at)
    assert not at.exception, at.exception
    assert "Answered in the fork." in texts(at) and "Answered once." not in texts(at)
    assert not at.chat_input[0].disabled


def test_clarifying_question_options_answer_in_one_click():
    from agent_script import output_call, scripted
    from pydantic_ai.messages import ModelResponse

    def ask_back(messages, info):
        return ModelResponse(parts=[output_call(info, "Clarification", {"question": "Which churn?", "options": ["Logo churn", "Revenue churn"]})])

    use_model(scripted(ask_back))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("What is churn?").run()
    settle(at)
    assert "Which churn?" in texts(at)
    seen: list = []
    use_model(sql_script([], {"answer_markdown": "Logo churn it is."}, seen=seen))
    [b for b in at.button if b.label == "Logo churn"][0].click().run()
    settle(at)
    assert not at.exception, at.exception
    assert "Logo churn it is." in texts(at)
    from test_threads import prompts_seen

    assert prompts_seen(seen[0]) == ["What is churn?", "Logo churn"]


def test_a_run_survives_leaving_the_page_and_shows_live_progress():
    from agent_script import then_wait

    use_model(then_wait("SELECT 7 AS seven", wait_s=3, answer="Seven it is."))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("Slow question?").run()
    assert not at.exception, at.exception
    assert [b for b in at.button if b.key and b.key.startswith(("stop_", "withdraw_"))]  # the live view, not an answer yet
    assert "Seven it is." not in texts(at)
    at.switch_page("views/data.py").run()  # the analyst looks elsewhere while the model thinks
    assert not at.exception, at.exception
    at.switch_page("views/chat.py")
    settle(at)
    assert "Seven it is." in texts(at) and "interrupted" not in texts(at).lower()


def test_stop_from_the_page_records_a_stopped_turn_with_retry():
    from agent_script import then_wait

    use_model(then_wait("SELECT 7 AS seven", wait_s=60))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("Too slow?").run()
    from cfo_desk.services.session import open_session
    from cfo_desk.storage.models import Run

    deadline = time.monotonic() + 20
    while True:  # wait until the first query's result is on record, then redraw the live view
        with open_session() as session:
            run = session.get(Run, 1)
            if any(p["kind"] == "tool_result" for p in run.progress):
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    at.run()
    assert any("Running SQL" in m.value for m in at.markdown)  # the step, with its SQL
    assert any("SELECT 7 AS seven" in c.value for c in at.code)
    [b for b in at.button if b.key and b.key.startswith("stop_")][0].click().run()
    settle(at)
    assert "Stopped by the analyst" in texts(at)
    retry = [b for b in at.button if b.key and b.key.startswith("retry_")]
    assert retry
    use_model(sql_script(["SELECT 8 AS eight"], {"answer_markdown": "Answered after all."}))
    retry[0].click().run()
    settle(at)
    assert "Answered after all." in texts(at)


def test_two_questions_sent_back_to_back_are_both_answered_in_order():
    use_model(sql_script([], {"answer_markdown": "Noted."}, delay_s=0.3))
    at = app()
    create_workspace(at, "W")
    at.chat_input[0].set_value("First?").run()
    assert not at.chat_input[0].disabled  # a follow-up can be typed while the first runs
    at.chat_input[0].set_value("Second?").run()
    settle(at)
    users = [m.value for m in at.markdown if m.value in ("First?", "Second?")]
    assert users == ["First?", "Second?"] and texts(at).count("Noted.") == 2


def test_an_overlong_question_is_refused_and_kept_in_the_composer():
    use_model(sql_script([], {"answer_markdown": "unused"}))
    at = app()
    create_workspace(at, "W")
    long_question = "Why? " * 5000
    at.chat_input[0].set_value(long_question).run()
    assert not at.exception, at.exception
    assert any("questions are at most 20,000" in e.value for e in at.error)
    assert not [b for b in at.sidebar.button if b.key and b.key.startswith("thread_")]  # no empty thread left behind
    composer = at.chat_input[0].proto
    assert composer.set_value and composer.value == long_question  # the text is put back, nothing typed is lost
    assert not at.chat_input[0].disabled
    at.chat_input[0].set_value("Short now?").run()
    settle(at)
    assert "unused" in texts(at)


def test_a_question_that_starts_while_the_page_draws_is_shown_once(monkeypatch):
    """The page reads the open runs, then the conversation. A run queued at the first read that
    the worker starts before the second has committed its question in between: it must be drawn
    once (by the live view), not also as a message of the conversation (seen in chromium)."""
    import time as _time

    from cfo_desk.services import runs as runs_svc
    from cfo_desk.services import threads as threads_svc
    from cfo_desk.services import worker as worker_svc
    from cfo_desk.services.session import open_session

    from types import SimpleNamespace

    from cfo_desk.ui import shell

    real_start, real_conversation = worker_svc.start_worker, threads_svc.conversation
    shell._run_worker.clear()
    monkeypatch.setattr(worker_svc, "start_worker", lambda: SimpleNamespace(alive=True))  # runs stay queued ...

    def conversation_after_the_run_started(*, session, thread_id):
        open_ids = [r.id for r in runs_svc.open_runs(session=session, thread_id=thread_id)]
        if open_ids:  # ... until the page has read them: now the worker starts the run
            real_start()
            deadline = _time.monotonic() + 20
            while _time.monotonic() < deadline:
                with open_session() as other:
                    if runs_svc.question_ids(session=other, run_ids=open_ids):
                        break
                _time.sleep(0.05)
        return real_conversation(session=session, thread_id=thread_id)

    monkeypatch.setattr(threads_svc, "conversation", conversation_after_the_run_started)
    use_model(sql_script(["SELECT 1 AS one"], {"answer_markdown": "Done."}, delay_s=3.0))
    try:
        at = app()
        create_workspace(at, "W")
        at.chat_input[0].set_value("Asked exactly once?").run()
        assert not at.exception, at.exception
        shown = [m for m in at.chat_message if m.name == "user" and any("Asked exactly once?" in md.value for md in m.markdown)]
        assert len(shown) == 1
    finally:
        monkeypatch.setattr(worker_svc, "start_worker", real_start)
        shell._run_worker.clear()  # no stand-in cached for later tests
    settle(at)
