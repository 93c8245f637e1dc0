"""Re-make docs/screenshot.png: the sample workspace answering the MRR question, against the stub model.

Run: .venv/bin/python docs/screenshot.py (needs chromium). The answer is scripted, not a real model's.
"""
import json, os, shutil, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
HOME = Path(tempfile.mkdtemp(prefix="cfo-shot-")) / "home"
OUT = ROOT / "docs" / "screenshot.png"
from stub_openai import StubOpenAIServer, Reply, ToolCall
from playwright.sync_api import sync_playwright

SQL = """SELECT DATE '2024-12-31' AS as_of, round(sum(mrr_usd), 2) AS mrr_usd, round(12 * sum(mrr_usd), 2) AS arr_usd,
  count(DISTINCT customer_id) AS active_customers
FROM subscriptions
WHERE start_date <= DATE '2024-12-31' AND (end_date IS NULL OR end_date >= DATE '2024-12-31')"""

def policy(req):
    msgs = req["messages"]; last = msgs[-1]
    if last["role"] == "user":
        return Reply(tool_calls=[ToolCall("run_sql", {"purpose": "MRR and active customers at 31 Dec 2024", "sql": SQL})])
    content = json.loads(last["content"]) if isinstance(last["content"], str) else last["content"]
    month, mrr, arr, cust = content["rows"][0]
    tool = next(t["function"]["name"] for t in req["tools"] if "FinalAnswer" in t["function"]["name"])
    return Reply(tool_calls=[ToolCall(tool, {
        "answer_markdown": f"**MRR in December 2024 was ${mrr:,.2f}** (q1): the sum of `mrr_usd` over the subscriptions of the {cust} customers active on 31 December 2024 "
                           "(started on or before that day, and not ended before it). Annual contracts are already normalised to a monthly amount (annual price / 12). "
                           f"ARR is therefore **${arr:,.2f}** and ARPU **${mrr/cust:,.2f}** per active customer.",
        "key_figures": [{"label": "MRR, Dec 2024", "value": mrr, "unit": "USD", "period": "2024-12", "query": "q1", "column": "mrr_usd"},
                        {"label": "ARR (12 × MRR)", "value": arr, "unit": "USD", "period": "2024-12", "query": "q1", "column": "arr_usd"},
                        {"label": "Active customers", "value": cust, "unit": "customers", "period": "2024-12-31", "query": "q1"}],
        "assumptions": ["Calendar months", "USD", "end_date is the last day of service"]})])

with StubOpenAIServer(policy=policy) as stub:
    env = dict(os.environ, CFO_DESK_HOME=str(HOME), CFO_DESK_MODEL="openai-chat:stub-model", OPENAI_BASE_URL=stub.base_url, OPENAI_API_KEY="x")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "streamlit"), "run", "app.py", "--server.port", "8597"], cwd=str(ROOT), env=env, stdout=open(HOME.parent / "app.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(60):
            try:
                if urllib.request.urlopen("http://127.0.0.1:8597/_stcore/health").read() == b"ok": break
            except Exception: time.sleep(0.5)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox","--disable-gpu","--disable-background-networking","--disable-component-update","--disable-sync","--no-first-run"])
            pg = b.new_page(viewport={"width": 1440, "height": 960})
            pg.goto("http://127.0.0.1:8597/")
            pg.get_by_role("button", name="Load sample workspace").first.click()
            pg.get_by_role("button", name="What was MRR in December 2024?").click()
            pg.get_by_text("MRR in December 2024 was").first.wait_for(timeout=30000)
            pg.wait_for_timeout(1500)
            pg.get_by_text("SQL").first.click()
            pg.wait_for_timeout(800)
            pg.screenshot(path=str(OUT))
            b.close()
    finally:
        proc.terminate(); proc.wait(10)
