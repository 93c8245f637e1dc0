"""Untrusted text fetches nothing in a real browser: `streamlit run` + Debian chromium + a stub model
whose answer carries every Markdown image and link form (tests/test_inert.py's FORMS) pointing at a
second HTTP server on 127.0.0.2 that records what it gets. The workspace name, the question (thread
title), the run_sql purpose (result title, Artifacts page), key figure labels/values/help, the answer,
the assumptions, a clarification and its option buttons all carry them. The recording server must get
zero requests, and Playwright must see no request leave 127.0.0.1.

Run: .venv/bin/pytest -q tests/test_browser_inert.py
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_browser import (  # noqa: F401 - fixtures are used by name
    REVENUE_CSV,
    _browser_page,
    _called_tool,
    _final_answer_tool,
    _new_workspace_with_csv,
    _rerun,
    _text,
    app_url,
    chromium,
)
from test_inert import FORMS

try:
    from stub_openai import Reply, StubOpenAIServer, ToolCall
except ImportError:  # pragma: no cover
    from tests.stub_openai import Reply, StubOpenAIServer, ToolCall

pytestmark = pytest.mark.browser



class Witness:
    """A tiny HTTP server on 127.0.0.2 that records every request it receives."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_POST = do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def witness() -> Iterator[Witness]:
    try:
        w = Witness()
    except OSError as exc:  # pragma: no cover - 127.0.0.2 is loopback on Linux
        pytest.skip(f"can't listen on 127.0.0.2: {exc}")
    yield w
    w.close()


def _forms(url: str) -> dict[str, str]:
    return {k: v.replace("http://127.0.0.2:9", url) for k, v in FORMS.items()}


def _attacks(url: str) -> str:
    f = _forms(url)
    keys = ("inline image", "reference image", "collapsed reference image", "shortcut reference image", "autolink", "HTML img", "inline link")
    return " ".join(f[k].replace("\n", " ") for k in keys)


@pytest.fixture
def stub(witness: Witness) -> Iterator[StubOpenAIServer]:
    """Overrides test_browser's stub (app_url asks for it by name): every answer carries the forms."""
    attacks = _attacks(witness.url)
    answer = "ANSWER-OK **bold** stays.\n\n" + "\n\n".join(_forms(witness.url).values())

    def policy(request: dict[str, Any]) -> Reply:
        messages = request.get("messages") or []
        last = messages[-1] if messages else {}
        if last.get("role") == "user":
            question = _text(last.get("content"))
            if "clarify" in question:
                final = _final_answer_tool(request).replace("FinalAnswer", "Clarification")
                return Reply(tool_calls=[ToolCall(final, {"question": "CLARIFY-OK " + answer, "options": ["OPTION-OK " + attacks, "Other"]})])
            return Reply(tool_calls=[ToolCall("run_sql", {"purpose": "PURPOSE-OK " + attacks, "sql": "SELECT 42 AS answer"})])
        if last.get("role") == "tool" and _called_tool(messages, last.get("tool_call_id")) == "run_sql":
            args = {
                "answer_markdown": answer,
                "key_figures": [{"label": "FIG-OK " + attacks, "value": 42, "unit": f"![u]({witness.url}/unit.png)", "period": attacks, "query": "q1"}],
                "assumptions": ["ASSUME-OK " + attacks],
            }
            return Reply(tool_calls=[ToolCall(_final_answer_tool(request), args)])
        return Reply(text="stub: nothing to do")

    with StubOpenAIServer(policy=policy) as server:
        yield server


def test_untrusted_text_fetches_nothing(chromium: str, app_url: str, stub: StubOpenAIServer, witness: Witness, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    csv_path = tmp_path / "revenue.csv"
    csv_path.write_text(REVENUE_CSV)
    attacks = _attacks(witness.url)
    outside: list[str] = []
    with _browser_page(chromium, "inert") as page:
        # test_browser aborts every request off 127.0.0.1; here 127.0.0.2 must get through to the
        # witness, so a fetch would be seen there as well as here.
        page.unroute_all(behavior="ignoreErrors")
        page.route(re.compile(r"^(?!https?://127\.0\.0\.[12][:/]).*"), lambda route: route.abort())
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("http://127.0.0.1:") else None)
        main = page.get_by_role("main")
        sidebar = page.get_by_test_id("stSidebar")

        name = f"WS-OK ![w]({witness.url}/ws.png) ![v][r]"
        _new_workspace_with_csv(page, app_url, csv_path, name)  # the picker shows the name literally

        composer = page.get_by_test_id("stChatInput").locator("textarea")
        composer.fill("QUESTION-OK " + attacks)
        composer.press("Enter")
        expect(main.get_by_text("ANSWER-OK")).to_be_visible()
        expect(main.get_by_test_id("stMetric").filter(has_text="FIG-OK")).to_be_visible()
        expect(main.get_by_text("PURPOSE-OK").first).to_be_visible()
        expect(main.get_by_text("ASSUME-OK")).to_be_visible()
        expect(sidebar.get_by_role("button", name=re.compile("QUESTION-OK"))).to_be_visible()
        expect(main.get_by_role("heading", name=re.compile("QUESTION-OK"))).to_be_visible()
        # The labels read literally: what was written, Markdown and all, without the zero-width spaces.
        label = main.get_by_test_id("stMetricLabel").first.inner_text().replace("\u200b", "")
        for tip in main.get_by_test_id("stMetric").get_by_test_id("stTooltipHoverTarget").all():
            tip.hover()  # the help tooltip renders (and would fetch) only on hover
            page.wait_for_timeout(300)

        # A clarification and its option buttons.
        composer.fill("please clarify")
        composer.press("Enter")
        expect(main.get_by_text("CLARIFY-OK")).to_be_visible()
        expect(main.get_by_role("button", name=re.compile("OPTION-OK"))).to_be_visible()

        # The Artifacts page (result titles in expander labels) and the delete dialog (the name).
        _rerun(page, page.get_by_test_id("stSidebarNav").get_by_role("link", name="Artifacts").click)
        expect(main.get_by_test_id("stExpander").filter(has_text="PURPOSE-OK").first).to_be_visible()
        sidebar.get_by_role("button", name="Manage workspace").click()  # a popover: no rerun
        _rerun(page, page.get_by_role("button", name="Delete workspace…").click)
        expect(page.get_by_role("dialog").get_by_text("WS-OK")).to_be_visible()
        page.wait_for_timeout(1_000)  # time for any late image load

        assert witness.hits == [], witness.hits
        assert main.locator("img, iframe, svg image, picture, object, embed, video").count() == 0
        links = [h for h in page.locator("a[href]").evaluate_all("els => els.map(e => e.getAttribute('href'))") if "127.0.0.2" in h]
        assert links == []
        # Nothing leaves 127.0.0.1 (app.py's page icon is an emoji: a :material/...: icon would load
        # the favicon from Google's font CDN).
        assert outside == [], outside

        assert "![x](" in label and "<img" in label, label

        # The witness works: a fetch the page does make on purpose is seen there.
        page.evaluate("url => fetch(url, {mode: 'no-cors'}).catch(() => null)", f"{witness.url}/control")
        page.wait_for_timeout(500)
    assert witness.hits == ["/control"], witness.hits
    json.dumps(stub.requests)  # the stub saw the turns (and nothing else is asserted about it)
