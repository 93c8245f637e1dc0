"""Big results don't slow the page: previews instead of whole results, downloads built on click,
large Parquet row groups, and an upload taken in once however its run ends.

The page tests drive the app in Streamlit's AppTest with the model scripted (tests/agent_script.py);
the service tests run real turns on DuckDB and read the real result files.
"""

from __future__ import annotations

import csv
import io
import re

import pyarrow.parquet as pq
import pytest
from agent_script import sql_script
from streamlit.runtime.scriptrunner import get_script_run_ctx
from test_ui import REVENUE_CSV, app, create_workspace, settle, texts

from cfo_desk.agent.core import use_model
from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services import datasets as datasets_svc
from cfo_desk.services import threads as threads_svc
from cfo_desk.services import turns, workspaces as workspaces_svc
from cfo_desk.storage.files import workspace_dir
from cfo_desk.ui import results

MILLION_SQL = "SELECT range AS i, range * 1.5 AS v FROM range(1000000)"


class Spy:
    """Counts calls of a function it wraps (or refuses them when `refuse` is set)."""

    def __init__(self, fn, refuse: bool = False):
        self.fn, self.refuse, self.calls = fn, refuse, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.refuse:
            raise AssertionError(f"{self.fn.__name__} must not be called here")
        return self.fn(*args, **kwargs)


def _ask_in_app(at, question: str) -> None:
    at.chat_input[0].set_value(question).run()
    settle(at)
    assert not at.exception, at.exception


def test_chat_shows_the_first_rows_of_a_million_row_result_and_never_reads_it_whole(monkeypatch):
    use_model(sql_script([MILLION_SQL], {"answer_markdown": "A million rows.", "queries": ["q1"]}))
    at = app()
    create_workspace(at, "Big")
    head = Spy(artifacts_svc.result_head)
    monkeypatch.setattr(artifacts_svc, "result_head", head)
    # Nothing on the page may load a whole result: not the service, not pyarrow's whole-file read.
    monkeypatch.setattr(artifacts_svc, "result_frame", Spy(artifacts_svc.result_frame, refuse=True))
    monkeypatch.setattr(artifacts_svc, "read_result", Spy(artifacts_svc.read_result, refuse=True))
    monkeypatch.setattr(pq, "read_table", Spy(pq.read_table, refuse=True))
    _ask_in_app(at, "Give me a million rows")

    assert "A million rows." in texts(at)
    assert at.dataframe, [w.value for w in at.warning]
    shown = at.dataframe[0].value
    assert 0 < len(shown) <= results.PREVIEW_ROWS
    assert shown["i"].tolist()[:3] == [0, 1, 2] and shown["v"].tolist()[:3] == [0.0, 1.5, 3.0]
    assert f"Showing the first {results.PREVIEW_ROWS:,} of 1,000,000 rows" in texts(at)
    assert at.get("download_button")  # the full CSV stays behind the download
    reads = head.calls
    assert reads == 1

    at.run()  # a rerun (any click) reads nothing again: the preview is kept per session
    at.run()
    assert not at.exception, at.exception
    assert head.calls == reads
    assert len(at.dataframe[0].value) <= results.PREVIEW_ROWS


def _turn(session, sql: str):
    """One real turn in a fresh workspace that runs `sql`: its artifact, the workspace, the thread."""
    ws = workspaces_svc.create_workspace(session=session, name="W")
    thread = threads_svc.create_thread(session=session, workspace_id=ws.id)
    reply = turns.ask(session=session, thread_id=thread.id, content="rows?", model=sql_script([sql], {"answer_markdown": "ok"}))
    (art,) = artifacts_svc.artifacts_by_message(session=session, message_ids=[reply.id])[reply.id]
    return art, ws, thread


def test_download_builds_the_full_escaped_csv_when_called(session):
    sql = (
        "SELECT range AS i, CASE range % 3 WHEN 0 THEN '=HYPERLINK(1)' WHEN 1 THEN '-2' ELSE 'ok' END AS t, "
        "-range AS neg FROM range(300000)"
    )
    art, _ws, _thread = _turn(session, sql)
    assert art.row_count == 300_000

    body = artifacts_svc.result_csv(art.id)  # what the download button calls on click
    assert body.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    assert len(rows) == 300_000  # all rows, not the preview
    assert [r["t"] for r in rows[:3]] == ["'=HYPERLINK(1)", "'-2", "ok"]  # formula-like text escaped
    assert rows[-1]["i"] == "299999" and rows[-1]["neg"] == "-299999"  # real negative numbers untouched

    head = artifacts_svc.result_head(session=session, artifact=art, rows=results.PREVIEW_ROWS)
    assert len(head) == results.PREVIEW_ROWS and head["i"].tolist()[:2] == [0, 1]


def test_a_million_row_result_is_stored_in_few_row_groups(session):
    art, ws, _thread = _turn(session, MILLION_SQL)
    meta = pq.ParquetFile(workspace_dir(ws.key) / art.file_path).metadata
    assert meta.num_rows == 1_000_000
    assert meta.num_row_groups <= 10  # one group per 10k-row batch made 100+


def _results_in_app(monkeypatch, sqls: list[str], answer: str):
    """An app whose new workspace has one answer with a result per SQL; the result-head reads
    counted from here on."""
    use_model(sql_script(sqls, {"answer_markdown": answer}))
    at = app()
    create_workspace(at, answer)
    _ask_in_app(at, f"Run {len(sqls)} queries")
    assert answer in texts(at)
    head = Spy(artifacts_svc.result_head)
    monkeypatch.setattr(artifacts_svc, "result_head", head)
    return at, head


def test_artifacts_page_shows_a_page_at_a_time_and_reads_each_result_once(monkeypatch):
    sqls = [f"SELECT {n} AS n FROM range({n + 1})" for n in range(22)]  # within the turn's request limit
    at, head = _results_in_app(monkeypatch, sqls, "Many results.")

    at.switch_page("views/artifacts.py").run()
    assert not at.exception, at.exception
    assert len(at.expander) == 20 and len(at.dataframe) == 20
    assert "22 artifact(s), newest first." in texts(at)
    first_page = head.calls
    assert first_page == 0  # the chat page already read all 22 previews this session

    page = at.selectbox(key=next(k for k in (s.key for s in at.selectbox) if k and k.startswith("artifacts_page")))
    page.set_value(2).run()
    assert len(at.expander) == 2 and len(at.dataframe) == 2
    page.set_value(1).run()
    assert len(at.expander) == 20 and head.calls == first_page


def test_previews_cache_is_bounded_but_keeps_what_a_run_draws(monkeypatch):
    """More results than the bound on one page: all are drawn from the cache on the next rerun."""
    monkeypatch.setattr(results, "MAX_CACHED_PREVIEWS", 3)
    at, head = _results_in_app(monkeypatch, [f"SELECT {n} AS n" for n in range(6)], "Six results.")
    at.run()
    assert len(at.dataframe) == 6 and head.calls == 0
    assert len(at.session_state[results._PREVIEWS]) == 6


def test_an_upload_whose_run_was_stopped_after_ingest_is_not_taken_in_again(monkeypatch):
    """Streamlit's fast reruns stop a running page when another rerun comes (e.g. a page change
    while a file is ingested): the ingest finishes, and the run raises StopException at its next
    Streamlit call. Here the stop is requested (as AppSession does) while the ingest runs; the
    stopped run's widget still holds the file (AppTest re-sends it on the next runs), and it must
    not be ingested again ("uploaded before. Replace or keep both?"), nor its message lost."""
    at = app()
    create_workspace(at, "W")
    real = datasets_svc.upload_file
    calls = []

    def upload_then_stopped(**kwargs):
        calls.append(kwargs["filename"])
        made = real(**kwargs)
        if len(calls) == 1:  # what AppSession does on a page change with fast reruns
            get_script_run_ctx().script_requests.request_stop()
        return made

    monkeypatch.setattr(datasets_svc, "upload_file", upload_then_stopped)
    at.sidebar.file_uploader[0].set_value(("xero.csv", REVENUE_CSV, "text/csv")).run()
    assert calls == ["xero.csv"]

    at.run()
    at.switch_page("views/data.py").run()
    at.switch_page("views/chat.py").run()
    assert not at.exception, at.exception
    assert calls == ["xero.csv"]  # ingested once
    assert not any("uploaded before" in w.value for w in at.sidebar.warning)
    assert any("Loaded **xero.csv** as `xero` (4 rows)" in s.value for s in at.sidebar.success)


def test_a_new_upload_of_the_same_file_still_asks(monkeypatch):
    """Only the same upload is skipped: uploading the file again is a new upload and asks."""
    at = app()
    create_workspace(at, "W")
    at.sidebar.file_uploader[0].set_value(("xero.csv", REVENUE_CSV, "text/csv")).run()
    at.switch_page("views/data.py").run()
    at.switch_page("views/chat.py").run()
    assert not any("uploaded before" in w.value for w in at.sidebar.warning)
    at.sidebar.file_uploader[0].set_value(("xero.csv", REVENUE_CSV, "text/csv")).run()
    assert any("uploaded before" in w.value for w in at.sidebar.warning)


# --------------------------------------------------------------------------- in a real browser
# `streamlit run` + chromium, with the fixtures of tests/test_browser.py (skipped without chromium).

from test_browser import ARTIFACTS, _browser_page, _rerun, app_url, chromium, stub  # noqa: E402,F401 - fixtures

@pytest.mark.browser
def test_browser_shows_a_preview_and_downloads_all_million_rows(chromium, app_url, session, tmp_path):
    """The thread is made in this process on the app's own store; the page shows 500 rows, and
    the CSV button downloads every row (built on click by the deferred callable)."""
    from playwright.sync_api import expect

    _art, ws, thread = _turn(session, MILLION_SQL)
    with _browser_page(chromium, "big-result") as page:
        page.goto(f"{app_url}/?ws={ws.id}&thread={thread.id}")
        main = page.get_by_role("main")
        expect(main.get_by_text(f"Showing the first {results.PREVIEW_ROWS:,} of 1,000,000 rows")).to_be_visible(timeout=30_000)
        expect(main.get_by_test_id("stDataFrame")).to_be_visible()
        expect(main.get_by_role("button", name="CSV")).to_be_visible()
        page.wait_for_timeout(500)  # the grid paints its cells
        page.screenshot(path=str(ARTIFACTS / "big-result.png"), full_page=True)
        with page.expect_download(timeout=120_000) as download:
            main.get_by_role("button", name="CSV").click()
        path = download.value.path()
        with open(path, encoding="utf-8-sig") as f:
            lines = sum(1 for _ in f)
        assert lines == 1_000_001  # the header and every row


@pytest.mark.browser
def test_browser_page_change_while_an_upload_is_ingested(chromium, app_url, tmp_path):
    """Leaving the page while a file is still being ingested (Streamlit stops that run at once,
    its thread still finishes the ingest): coming back shows the file loaded once, with its
    message, and no "uploaded before" question."""
    from playwright.sync_api import expect

    big = tmp_path / "xero.csv"
    big.write_text("date,amount\n" + "".join(f"2024-01-{1 + i % 28:02d},{i}.5\n" for i in range(200_000)))
    with _browser_page(chromium, "upload-page-change") as page:
        sidebar = page.get_by_test_id("stSidebar")
        page.goto(app_url)
        expect(sidebar.get_by_role("button", name="Load sample workspace")).to_be_visible(timeout=30_000)
        sidebar.get_by_role("button", name="New workspace").click()
        page.get_by_role("textbox", name="Name").fill("W")
        _rerun(page, page.get_by_role("button", name="Create").click)
        nav = sidebar.get_by_test_id("stSidebarNav")

        loaded = sidebar.get_by_text(re.compile(r"Loaded\s+xero\.csv\s+as\s+xero\s+\(200,000 rows\)"))
        sidebar.locator("input[type=file]").set_input_files(str(big))
        # The ingest has started (a 200,000-row file takes well under a second now, so its status
        # may already have given way to the result when the browser looks).
        expect(sidebar.get_by_text("Reading the uploaded file(s)…").or_(loaded)).to_be_visible()
        nav.get_by_role("link", name="Data").click()  # ... and its run is stopped by the page change
        expect(page.get_by_role("main").get_by_role("heading", name="Data")).to_be_visible()
        page.wait_for_timeout(10_000)  # the stopped run's thread finishes the ingest meanwhile
        _rerun(page, nav.get_by_role("link", name="Chat").click)
        expect(loaded).to_be_visible()
        _rerun(page, nav.get_by_role("link", name="Data").click)
        _rerun(page, nav.get_by_role("link", name="Chat").click)
        expect(loaded).to_be_visible()
        expect(sidebar.get_by_text("uploaded before")).to_have_count(0)
        expect(sidebar.get_by_text(re.compile(r"xero\s*· 200,000 rows"))).to_have_count(1)
