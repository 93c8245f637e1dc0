"""The key journey in a real browser: `streamlit run` + Debian chromium (Playwright) + a stub model.

Mirrors test_ui.test_journey_create_upload_ask_fork, but through the real frontend: create a workspace,
upload a CSV, ask, fork from the answer, ask in the fork, go back to the source thread. The model is
tests/stub_openai.py served in-process on 127.0.0.1; the app subprocess reaches it via OPENAI_BASE_URL.
Screenshots go to <repo>/test-artifacts/ (gitignored); the README uses journey-answer.png.

Background runs (a turn runs in the app's worker thread, not in the page): with the stub holding the
model's last request of the turn, a run survives leaving the Chat page, a reload and a closed tab
(test-artifacts/run-in-progress.png shows its live progress), and Stop stops it, with Retry after.

Run: .venv/bin/pytest -q tests/test_browser.py   (select/deselect with -m browser / -m "not browser").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

try:  # rootdir-relative import when tests/ is a plain directory (pytest's default "prepend" mode)
    from stub_openai import Reply, StubOpenAIServer, ToolCall
except ImportError:  # pragma: no cover - tests/ turned into a package
    from tests.stub_openai import Reply, StubOpenAIServer, ToolCall

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
STREAMLIT = REPO / ".venv" / "bin" / "streamlit"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REVENUE_CSV = "month;region;revenue\n2024-10-01;EMEA;1.200,50\n2024-11-01;EMEA;1.300,25\n2024-12-01;EMEA;1.450,00\n2024-12-01;APAC;800,00\n"
QUESTION_1 = "What was revenue in December 2024?"
QUESTION_2 = "How many rows?"
ANSWER_1 = "December revenue was 2,250.00 EUR."
ANSWER_2 = "There are 4 revenue rows."

QUESTION_3 = "A chart and a workbook of revenue by month, please"
ANSWER_3 = "Revenue by month is charted in c1 and built into w1."
CHART_SPEC = {"result": "q1", "mark": "bar", "x": "month", "y": "revenue", "title": "Revenue by month", "x_format": "month",
              "y_format": "currency", "currency": "EUR"}
WORKBOOK_SPEC = {
    "title": "Revenue by month",
    "currency": "EUR",
    "data_sheets": [{"name": "Revenue", "result": "q1"}],
    "model_sheets": [{"name": "Summary", "cells": [
        {"ref": "A1", "value": "Total revenue", "kind": "label"},
        {"ref": "B1", "formula": "=SUM('Revenue'!B2:B4)", "kind": "total", "number_format": "currency"},
    ]}],
}

STARTUP_TIMEOUT_S = 60
UI_TIMEOUT_MS = 20_000  # one rerun or agent turn (two stub requests) takes ~1-3 s; generous for loaded machines


# --------------------------------------------------------------------------- the stub model


def _text(content: Any) -> str:
    """A chat message's ``content`` (str, list of parts or None) as text."""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def _called_tool(messages: list[dict[str, Any]], call_id: str | None) -> str | None:
    """The function name of the assistant tool call ``call_id``."""
    for msg in reversed(messages):
        for call in msg.get("tool_calls") or []:
            if call.get("id") == call_id:
                return (call.get("function") or {}).get("name")
    return None


def _final_answer_tool(request: dict[str, Any]) -> str:
    """pydantic-ai's FinalAnswer output tool (``final_result_FinalAnswer``) from the request's tools."""
    names = [(t.get("function") or {}).get("name", "") for t in request.get("tools") or []]
    finals = [n for n in names if n.startswith("final_result")]
    return next((n for n in finals if "FinalAnswer" in n), finals[0] if finals else "final_result")


def journey_policy(request: dict[str, Any]) -> Reply:
    """User question -> one run_sql chosen by the question; run_sql result -> FinalAnswer from its rows."""
    messages: list[dict[str, Any]] = request.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "user":
        question = _text(last.get("content"))
        if "December" in question:
            sql = "SELECT sum(revenue) AS total FROM revenue WHERE month = DATE '2024-12-01'"
            purpose = "December 2024 revenue"
        elif "rows" in question:
            sql = "SELECT count(*) AS n FROM revenue"
            purpose = "Revenue rows"
        elif "chart" in question:
            sql = "SELECT month, sum(revenue) AS revenue FROM revenue GROUP BY month ORDER BY month"
            purpose = "Revenue by month"
        else:
            return Reply(text=f"stub: no script for {question!r}")
        return Reply(tool_calls=[ToolCall("run_sql", {"purpose": purpose, "sql": sql})])

    called = _called_tool(messages, last.get("tool_call_id")) if last.get("role") == "tool" else None
    if called == "run_sql" and "month" in _text(last.get("content")):  # the chart question's result
        return Reply(tool_calls=[ToolCall("make_chart", {"spec": CHART_SPEC})])
    if called == "make_chart":
        return Reply(tool_calls=[ToolCall("build_workbook", {"spec": WORKBOOK_SPEC})])
    if called == "build_workbook":
        return Reply(tool_calls=[ToolCall(_final_answer_tool(request), {"answer_markdown": ANSWER_3})])
    if last.get("role") == "tool" and called == "run_sql":
        content = _text(last.get("content"))
        try:
            result = json.loads(content)
            value = result["rows"][0][0]
            column = result["columns"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            # A refused/failed query (ModelRetry text): surface it in the app, so the test says why.
            answer = f"stub: run_sql did not return rows: {content[:300]}"
        else:
            name = column.get("name") if isinstance(column, dict) else column
            if name == "total":
                answer = f"December revenue was {float(value):,.2f} EUR."
            else:
                answer = f"There are {int(value)} revenue rows."
        return Reply(tool_calls=[ToolCall(_final_answer_tool(request), {"answer_markdown": answer})])

    return Reply(text="stub: nothing to do")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def chromium() -> str:
    """Debian's chromium (Playwright cannot download its own browser here); checked before the app starts."""
    path = shutil.which("chromium")
    reason = "chromium not found on PATH; install chromium: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401 - the dev extra
    except ImportError:
        path, reason = None, "the playwright package is missing: pip install -e '.[dev]'"
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


@pytest.fixture
def stub() -> Iterator[StubOpenAIServer]:
    with StubOpenAIServer(policy=journey_policy) as server:
        yield server


@pytest.fixture
def app_url(stub: StubOpenAIServer, home: Path, tmp_path: Path) -> Iterator[str]:
    """`streamlit run app.py` on a free port with a fresh home and the stub as its model; its URL."""
    if not STREAMLIT.exists():
        pytest.fail(f"{STREAMLIT} is missing: run `make install` first")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("STUB_")}
    env.update(
        CFO_DESK_HOME=str(home),
        CFO_DESK_MODEL="openai-chat:stub-model",
        OPENAI_BASE_URL=stub.base_url,
        OPENAI_API_KEY="test-key",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(STREAMLIT), "run", str(REPO / "app.py"),
                "--server.port", str(port),
                "--server.address", "127.0.0.1",
                "--server.headless", "true",
                "--browser.gatherUsageStats", "false",
                # Others edit src/ while tests run: a watcher would drop changed modules mid-test and
                # re-import them (SQLModel then fails "Table 'workspace' is already defined").
                "--server.fileWatcherType", "none",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode} before it was healthy:\n{_log_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.status == 200 and resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit was not healthy after {STARTUP_TIMEOUT_S} s:\n{_log_tail(log_path)}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        # Captured by pytest and shown only when the test fails.
        print(f"--- streamlit log ({log_path}) ---\n{_log_tail(log_path)}")
        print(f"--- stub model: {len(stub.requests)} request(s) ---")


# --------------------------------------------------------------------------- browser helpers


@contextmanager
def _browser_page(chromium: str, name: str) -> Iterator[Any]:
    """A chromium page that can reach only 127.0.0.1; on failure test-artifacts/<name>-failure.png."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    failure = ARTIFACTS / f"{name}-failure.png"
    failure.unlink(missing_ok=True)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()  # a context of our own: a test may open more tabs
            _prepare(page)
            try:
                yield page
            except Exception:
                open_pages = page.context.pages  # the test may have closed this tab and opened another
                if open_pages:
                    open_pages[-1].screenshot(path=str(failure), full_page=True)
                raise
        finally:
            browser.close()


def _prepare(page) -> None:
    page.set_viewport_size({"width": 1400, "height": 900})
    page.set_default_timeout(UI_TIMEOUT_MS)
    # No request may leave 127.0.0.1 (fonts, telemetry, ...): abort anything else.
    page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), lambda route: route.abort())


# Counts finished script runs: the frontend sets stApp's data-test-script-state to "running" while the
# script runs and back to "notRunning" after it. Waiting for "a run started and ended after my action"
# beats polling the attribute alone, which may still say "notRunning" before the rerun begins.
_WATCH_RUNS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (window.__runWatch !== app) {
    window.__runWatch = app;
    window.__runsDone = 0;
    let running = app.getAttribute('data-test-script-state') === 'running';
    new MutationObserver(() => {
      const now = app.getAttribute('data-test-script-state') === 'running';
      if (running && !now) window.__runsDone += 1;
      running = now;
    }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  }
  return window.__runsDone;
}"""

# A run that ends in st.rerun / st.switch_page is followed by another: "settled" also needs no element
# left stale (data-stale="true": drawn by an earlier run, not yet redrawn or removed by this one).
_SETTLED = """n => window.__runsDone > n
  && document.querySelector('[data-testid="stApp"]').getAttribute('data-test-script-state') === 'notRunning'
  && !document.querySelector('[data-stale="true"]')"""


def _heading(scope, name: str, timeout: int = UI_TIMEOUT_MS, exact: bool = False) -> None:
    """A page title, once and visible: during a rerun Streamlit can keep the old title beside the
    new one until the run ends (a strict `to_be_visible` then fails at once on two elements)."""
    from playwright.sync_api import expect

    title = scope.get_by_role("heading", name=name, exact=exact)
    expect(title).to_have_count(1, timeout=timeout)
    expect(title).to_be_visible(timeout=timeout)


def _rerun(page, action) -> None:
    """Do `action` and wait until a script run started after it has finished (not for pages with
    a live run: its fragment reruns every second, so "a run finished" says nothing there)."""
    before = page.evaluate(_WATCH_RUNS)
    action()
    page.wait_for_function(_SETTLED, arg=before, timeout=UI_TIMEOUT_MS)


def _ask(page, question: str) -> None:
    composer = page.get_by_test_id("stChatInput").locator("textarea")
    composer.fill(question)
    composer.press("Enter")


def _new_workspace_with_csv(page, url: str, csv_path: Path, name: str) -> None:
    """From an empty install: create workspace `name` in the sidebar and upload the revenue CSV."""
    from playwright.sync_api import expect

    sidebar = page.get_by_test_id("stSidebar")
    # 1. Empty install: offers the sample; create a workspace from the "New workspace" popover.
    page.goto(url)
    expect(sidebar.get_by_role("button", name="Load sample workspace")).to_be_visible(timeout=30_000)
    sidebar.get_by_role("button", name="New workspace").click()
    name_box = page.get_by_role("textbox", name="Name")
    expect(name_box).to_be_visible()
    name_box.fill(name)
    _rerun(page, page.get_by_role("button", name="Create").click)
    expect(sidebar.get_by_role("combobox", name="Workspace")).to_have_value(name)
    expect(sidebar.get_by_role("button", name="Load sample workspace")).to_have_count(0)

    # 2. Upload the CSV (European number format) through the sidebar's file input.
    _rerun(page, lambda: sidebar.locator("input[type=file]").set_input_files(str(csv_path)))
    expect(sidebar.get_by_text(re.compile(r"Loaded\s+revenue\.csv\s+as\s+revenue\s+\(4 rows\)"))).to_be_visible()
    expect(sidebar.get_by_text(re.compile(r"revenue\s*· 4 rows"))).to_be_visible()  # the Datasets list


# --------------------------------------------------------------------------- the journey


def test_journey_in_browser(chromium: str, app_url: str, stub: StubOpenAIServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    csv_path = tmp_path / "revenue.csv"
    csv_path.write_text(REVENUE_CSV)
    with _browser_page(chromium, "journey") as page:
        _journey(page, app_url, csv_path, expect)

    # Two model requests per turn: question -> run_sql, run_sql result -> FinalAnswer.
    assert len(stub.requests) == 4, [r["messages"][-1] for r in stub.requests]


def _journey(page, url: str, csv_path: Path, expect) -> None:
    sidebar = page.get_by_test_id("stSidebar")
    # data-testid stMain, or stAppScrollToBottomContainer once the page has a chat input.
    main = page.get_by_role("main")

    def rerun(action) -> None:
        _rerun(page, action)

    def ask(question: str) -> None:
        _ask(page, question)

    _new_workspace_with_csv(page, url, csv_path, "Acme FP&A")  # steps 1 and 2

    # 3. New thread, ask; the answer, its table and its SQL appear.
    rerun(sidebar.get_by_role("button", name="New thread").click)
    _heading(main, "New thread")
    rerun(lambda: ask(QUESTION_1))
    expect(main.get_by_text(ANSWER_1)).to_have_count(1)
    expect(main.get_by_text(ANSWER_1)).to_be_visible()
    _heading(main, QUESTION_1)  # the question names the thread
    expect(main.get_by_test_id("stDataFrame")).to_have_count(1)
    expect(main.get_by_test_id("stDataFrame")).to_be_visible()
    expect(main.get_by_test_id("stExpander").filter(has_text="SQL")).to_have_count(1)
    expect(main.get_by_test_id("stException")).to_have_count(0)
    expect(page).to_have_url(re.compile(r"[?&]thread=\d+"))
    page.wait_for_timeout(300)  # let the data grid paint its canvas before the screenshot
    page.screenshot(path=str(ARTIFACTS / "journey-answer.png"), full_page=True)

    # 4. Fork from the answer: the fork shows its lineage and the earlier answer.
    rerun(main.get_by_role("button", name="Fork from here").last.click)
    expect(main.get_by_text("Forked from")).to_be_visible()
    expect(main.get_by_role("heading", name=f"{QUESTION_1} · fork 1")).to_be_visible()
    expect(main.get_by_text(ANSWER_1)).to_have_count(1)
    expect(main.get_by_text(ANSWER_1)).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "journey-forked.png"), full_page=True)

    # 5. Ask something else in the fork.
    rerun(lambda: ask(QUESTION_2))
    expect(main.get_by_text(ANSWER_2)).to_have_count(1)
    expect(main.get_by_text(ANSWER_2)).to_be_visible()
    expect(main.get_by_text(ANSWER_1)).to_have_count(1)
    expect(main.get_by_text(ANSWER_1)).to_be_visible()
    expect(main.get_by_test_id("stDataFrame")).to_have_count(2)
    page.screenshot(path=str(ARTIFACTS / "journey-fork.png"), full_page=True)

    # 6. Back in the source thread: its answer, and not the fork's turn.
    source = sidebar.get_by_role("button", name=QUESTION_1).filter(has_not_text="fork")
    expect(source).to_have_count(1)
    rerun(source.click)
    _heading(main, QUESTION_1, exact=True)
    expect(main.get_by_text("Forked from")).to_have_count(0)
    expect(main.get_by_text(ANSWER_1)).to_have_count(1)
    expect(main.get_by_text(ANSWER_1)).to_be_visible()
    expect(main.get_by_text(ANSWER_2)).to_have_count(0)
    expect(main.get_by_test_id("stDataFrame")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "journey-source.png"), full_page=True)

    # 7. A deep link (and a reload) reopens the same workspace through app.py: our navigation,
    #    the Data page with the uploaded dataset, no auto-discovered "app" page.
    page.goto(url.rstrip("/") + "/data")
    _heading(main, "Data", timeout=30_000)
    expect(main.get_by_role("combobox", name="Dataset")).to_have_value(re.compile(r"revenue\s*·\s*4 rows"))
    expect(page.get_by_test_id("stSidebarNav").get_by_text("Artifacts")).to_be_visible()
    expect(page.get_by_test_id("stSidebarNav").get_by_text("app", exact=True)).to_have_count(0)


def test_chart_and_workbook_in_browser(chromium: str, app_url: str, stub: StubOpenAIServer, tmp_path: Path) -> None:
    """Ask for a chart and a workbook: the chart is drawn, the workbook's sheets are shown, and the
    downloaded .xlsx opens with openpyxl holding the data and a live formula."""
    import openpyxl
    from playwright.sync_api import expect

    csv_path = tmp_path / "revenue.csv"
    csv_path.write_text(REVENUE_CSV)
    with _browser_page(chromium, "deliverables") as page:
        main = page.get_by_role("main")
        _new_workspace_with_csv(page, app_url, csv_path, "Deliverables")
        _rerun(page, page.get_by_test_id("stSidebar").get_by_role("button", name="New thread").click)
        _rerun(page, lambda: _ask(page, QUESTION_3))
        expect(main.get_by_text(ANSWER_3)).to_be_visible()
        expect(main.get_by_test_id("stVegaLiteChart")).to_have_count(1)
        expect(main.get_by_test_id("stVegaLiteChart")).to_be_visible()
        expect(main.get_by_role("tab", name="Summary")).to_be_visible()
        expect(main.get_by_role("tab", name="Sources")).to_be_visible()
        expect(main.get_by_test_id("stException")).to_have_count(0)
        page.wait_for_timeout(500)  # let the chart paint before the screenshot
        page.screenshot(path=str(ARTIFACTS / "deliverables.png"), full_page=True)
        with page.expect_download() as download:
            main.get_by_role("button", name="Download .xlsx").click()
        path = tmp_path / "w1.xlsx"
        download.value.save_as(path)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Summary", "Revenue", "Sources"]
    assert book["Summary"]["B1"].value == "=SUM('Revenue'!B2:B4)"
    assert [book["Revenue"].cell(row=r, column=2).value for r in range(2, 5)] == [1200.5, 1300.25, 2250.0]


def test_branches_reload_and_history_in_browser(chromium: str, app_url: str, stub: StubOpenAIServer, tmp_path: Path) -> None:
    """Edit a question (a new branch), switch ‹1/2›, reload (the branch shown stays), then Back and
    Forward step between two threads."""
    from playwright.sync_api import expect

    csv_path = tmp_path / "revenue.csv"
    csv_path.write_text(REVENUE_CSV)
    with _browser_page(chromium, "branches") as page:
        main = page.get_by_role("main")
        sidebar = page.get_by_test_id("stSidebar")
        _new_workspace_with_csv(page, app_url, csv_path, "Branches")
        _rerun(page, sidebar.get_by_role("button", name="New thread").click)
        _rerun(page, lambda: _ask(page, QUESTION_1))
        expect(main.get_by_text(ANSWER_1)).to_be_visible()
        first_url = page.url

        # Edit the question and send it as a new branch.
        _rerun(page, main.get_by_role("button", name="Edit").click)
        box = main.get_by_test_id("stTextArea").locator("textarea")
        box.fill(QUESTION_2)
        _rerun(page, main.get_by_role("button", name="Send as a new branch").click)
        expect(main.get_by_text(ANSWER_2)).to_be_visible()
        expect(main.get_by_text(ANSWER_1)).to_have_count(0)
        expect(main.get_by_text("2/2", exact=True)).to_be_visible()

        # ‹ back to the first branch; a reload keeps it.
        _rerun(page, main.get_by_role("button", name="‹").click)
        expect(main.get_by_text(ANSWER_1)).to_be_visible()
        expect(main.get_by_text("1/2", exact=True)).to_be_visible()
        page.reload()
        expect(main.get_by_text(ANSWER_1)).to_be_visible(timeout=30_000)
        expect(main.get_by_text(ANSWER_2)).to_have_count(0)

        # A second thread, then Back and Forward between the two.
        _rerun(page, sidebar.get_by_role("button", name="New thread").click)
        _heading(main, "New thread")
        _rerun(page, lambda: _ask(page, "How many rows are there?"))
        _heading(main, "How many rows are there?", exact=True)
        expect(main.get_by_text(ANSWER_2)).to_be_visible()
        assert page.url != first_url
        # Back: the empty "New thread" page, then the first thread; Forward: the way back again.
        page.go_back()
        _heading(main, "New thread")
        page.go_back()
        _heading(main, QUESTION_1, exact=True)
        expect(main.get_by_text(ANSWER_1)).to_be_visible()
        page.go_forward()
        _heading(main, "New thread")
        page.go_forward()
        _heading(main, "How many rows are there?", exact=True)
        page.screenshot(path=str(ARTIFACTS / "branches.png"), full_page=True)


# --------------------------------------------------------------------------- background runs
# A turn runs in the app's worker thread, not in the page: leaving for another page, reloading or
# closing the tab must not stop it, and Stop must. The stub holds the model's last request of a turn
# (the one after the run_sql result) until the test calls `stub.release()`, so each check below sees
# the run in progress for sure, with its SQL step already in the live progress.

HOLD_S = 60.0  # longer than any test waits; released by the test (or by the stub's teardown)
WORKING = re.compile(r"Working on it… (\d[\d,]*) s")


def _hold_final_answer(request: dict[str, Any]) -> float:
    """The stub's `delay_s`: hold the request that carries a run_sql result; answer the others at once."""
    messages = request.get("messages") or []
    last = messages[-1] if messages else {}
    held = last.get("role") == "tool" and _called_tool(messages, last.get("tool_call_id")) == "run_sql"
    return HOLD_S if held else 0.0


def _start_held_run(page, url: str, stub: StubOpenAIServer, tmp_path: Path, workspace: str) -> None:
    """A workspace with the revenue CSV, QUESTION_1 asked, its run held after its SQL step."""
    from playwright.sync_api import expect

    csv_path = tmp_path / "revenue.csv"
    csv_path.write_text(REVENUE_CSV)
    _new_workspace_with_csv(page, url, csv_path, workspace)
    stub.delay_s = _hold_final_answer
    _ask(page, QUESTION_1)
    main = page.get_by_role("main")
    _expect_live(page)
    # The URL names the thread from the moment the question is queued.
    expect(page).to_have_url(re.compile(r"[?&]ws=\d+.*[?&]thread=\d+"))
    _heading(main, QUESTION_1)
    _wait_for(lambda: len(stub.requests) == 2)  # the held request (sent right after the SQL step)
    assert not stub.disconnected


def _wait_for(condition: Callable[[], bool], timeout_s: float = UI_TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _place(url: str) -> dict[str, list[str]]:
    """The workspace and thread a URL names."""
    query = parse_qs(urlsplit(url).query)
    return {k: query.get(k, []) for k in ("ws", "thread")}


def _expect_live(page) -> None:
    """The run's live view: status label, the run_sql step with its purpose, SQL and row count, Stop."""
    from playwright.sync_api import expect

    main = page.get_by_role("main")
    expect(main.get_by_text(WORKING)).to_be_visible()
    expect(main.get_by_text("Running SQL: December 2024 revenue")).to_be_visible()
    expect(main.get_by_test_id("stCode").filter(has_text="SELECT sum(revenue) AS total FROM revenue")).to_be_visible()
    expect(main.get_by_text("→ 1 row(s)")).to_be_visible()
    expect(main.get_by_role("button", name="Stop")).to_be_visible()
    expect(main.get_by_test_id("stChatMessage").filter(has_text=QUESTION_1)).to_have_count(1)  # the question, once
    expect(main.get_by_text(ANSWER_1)).to_have_count(0)


def _elapsed_s(page) -> int:
    """The live view's "Working on it… N s" as N."""
    label = page.get_by_role("main").get_by_text(WORKING).inner_text()
    match = WORKING.search(label)
    assert match, label
    return int(match.group(1).replace(",", ""))


def _expect_answered(page, stub: StubOpenAIServer, requests: int) -> None:
    """The committed answer (with its table), no live view left, nothing interrupted or failed."""
    from playwright.sync_api import expect

    main = page.get_by_role("main")
    expect(main.get_by_text(ANSWER_1)).to_be_visible()
    expect(main.get_by_text(ANSWER_1)).to_have_count(1)
    expect(main.get_by_test_id("stDataFrame")).to_have_count(1)
    expect(main.get_by_text(WORKING)).to_have_count(0)
    expect(main.get_by_role("button", name="Stop")).to_have_count(0)
    expect(main.get_by_text(re.compile("Interrupted|interrupted|The turn failed"))).to_have_count(0)
    expect(main.get_by_test_id("stException")).to_have_count(0)
    # The run was never restarted: one turn, two model requests, none abandoned.
    assert len(stub.requests) == requests, [r["messages"][-1] for r in stub.requests]
    assert not stub.disconnected


def test_run_survives_leaving_the_chat_page(chromium: str, app_url: str, stub: StubOpenAIServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with _browser_page(chromium, "run-navigation") as page:
        main = page.get_by_role("main")
        nav = page.get_by_test_id("stSidebarNav")
        _start_held_run(page, app_url, stub, tmp_path, "Navigation Co")

        # Away to the Data page while the run goes; it keeps going there (the model call is pending).
        nav.get_by_role("link", name="Data").click()
        _heading(main, "Data")
        expect(main.get_by_role("combobox", name="Dataset")).to_have_value(re.compile(r"revenue\s*·\s*4 rows"))
        expect(main.get_by_text(WORKING)).to_have_count(0)
        page.wait_for_timeout(1_500)
        assert len(stub.requests) == 2 and not stub.disconnected

        # Back to Chat: the same thread, the run still in progress, then its answer.
        nav.get_by_role("link", name="Chat").click()
        _heading(main, QUESTION_1)
        expect(page).to_have_url(re.compile(r"[?&]thread=\d+"))
        _expect_live(page)
        stub.release()
        _expect_answered(page, stub, requests=2)


def test_run_survives_reload_and_closed_tab(chromium: str, app_url: str, stub: StubOpenAIServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with _browser_page(chromium, "run-reload") as page:
        main = page.get_by_role("main")
        _start_held_run(page, app_url, stub, tmp_path, "Reload Co")
        thread_url = page.url
        assert _place(thread_url)["thread"], thread_url
        expect(main.get_by_text(re.compile(r"Working on it… [1-9]"))).to_be_visible()  # the fragment ticks
        before = _elapsed_s(page)

        # Reload: a new session lands on the same thread (from the URL) with the same run going.
        page.reload()
        _heading(main, QUESTION_1, timeout=30_000)
        assert _place(page.url) == _place(thread_url)
        _expect_live(page)
        assert _elapsed_s(page) >= before  # the same run's clock, not a new run
        page.wait_for_timeout(300)  # let the code block paint before the screenshot
        page.screenshot(path=str(ARTIFACTS / "run-in-progress.png"), full_page=True)

        # Close the tab; a new one at the same URL still finds the run going.
        context = page.context
        page.close()
        time.sleep(1.0)  # no tab open on the app for a moment
        page = context.new_page()
        _prepare(page)
        page.goto(thread_url)
        _heading(page.get_by_role("main"), QUESTION_1, timeout=30_000)
        _expect_live(page)
        assert len(stub.requests) == 2 and not stub.disconnected

        stub.release()
        _expect_answered(page, stub, requests=2)


def test_stop_then_retry(chromium: str, app_url: str, stub: StubOpenAIServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with _browser_page(chromium, "run-stop") as page:
        main = page.get_by_role("main")
        _start_held_run(page, app_url, stub, tmp_path, "Stop Co")

        main.get_by_role("button", name="Stop").click()
        expect(main.get_by_text("Stopped by the analyst")).to_be_visible()
        expect(main.get_by_text(WORKING)).to_have_count(0)
        expect(main.get_by_role("button", name="Stop")).to_have_count(0)
        # What the run did before it was stopped is kept (its run_sql call and result).
        expect(main.get_by_test_id("stExpander").filter(has_text="What the agent did before it ended")).to_be_visible()
        expect(main.get_by_text(ANSWER_1)).to_have_count(0)
        retry = main.get_by_role("button", name="Retry")
        expect(retry).to_be_visible()
        # Stop cancelled the model call in flight: the app hung up on the held request.
        _wait_for(lambda: len(stub.disconnected) == 1)
        assert len(stub.requests) == 2
        page.screenshot(path=str(ARTIFACTS / "run-stopped.png"), full_page=True)

        # Retry with a fast model: the answer replaces the stopped turn.
        stub.delay_s = 0.0
        retry.click()
        expect(main.get_by_text(ANSWER_1)).to_be_visible()
        expect(main.get_by_text("Stopped by the analyst")).to_have_count(0)
        expect(main.get_by_role("button", name="Retry")).to_have_count(0)
        expect(main.get_by_test_id("stChatMessage").filter(has_text=QUESTION_1)).to_have_count(1)  # asked once, not twice
        stub.disconnected.clear()
        _expect_answered(page, stub, requests=4)
