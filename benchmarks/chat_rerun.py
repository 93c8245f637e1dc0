"""Benchmark: the chat page's server-side rerun time (Streamlit AppTest) as a thread grows and
when it holds a 1,000,000-row result. Runs alone: `.venv/bin/python benchmarks/chat_rerun.py`.

Each thread is made with real turns (`turns.ask`, scripted model, real DuckDB and Parquet): every
turn runs one small query (`SELECT n AS n`), so every answer has a result table. The "big" thread
swaps its last turn's query for a 1M-row one. The page is opened on each thread once (the first
run reads each result's preview), then rerun RERUNS times (what every click costs), the four
pages in turn; medians printed.

Targets: a rerun with a 1M-row result within 1.2x of the same thread without it; a 200-message
thread under 0.5 s; a 1,000-message thread under 1 s.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pydantic_ai import models  # noqa: E402

models.ALLOW_MODEL_REQUESTS = False  # FunctionModel only; no provider is ever called

APP = str(ROOT / "app.py")
RERUNS = 21
MILLION_SQL = "SELECT range AS i, range * 1.5 AS v FROM range(1000000)"


def _thread(messages: int, big: bool) -> tuple[int, int]:
    """A workspace and a thread of `messages` messages (question + answer per turn); the last
    turn's query returns 1M rows when `big`. Returns (workspace id, thread id)."""
    from agent_script import sql_script

    from cfo_desk.services import threads as threads_svc
    from cfo_desk.services import turns, workspaces as workspaces_svc
    from cfo_desk.storage.db import session_scope

    with session_scope() as session:
        ws = workspaces_svc.create_workspace(session=session, name=f"bench {messages} {big}")
        thread = threads_svc.create_thread(session=session, workspace_id=ws.id)
        n_turns = messages // 2
        for n in range(n_turns):
            sql = MILLION_SQL if big and n == n_turns - 1 else f"SELECT {n} AS n"
            turns.ask(session=session, thread_id=thread.id, content=f"Question {n}?", model=sql_script([sql], {"answer_markdown": f"Answer {n}."}))
        return ws.id, thread.id


def _open(ws_id: int, thread_id: int):
    """An AppTest of the app opened on the thread (its URL), after its first (cold) run; and
    that run's seconds."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["ws"] = str(ws_id)
    at.query_params["thread"] = str(thread_id)
    started = time.perf_counter()
    at.run()
    cold = time.perf_counter() - started
    if at.exception:
        raise RuntimeError(at.exception)
    return at, cold


def main() -> None:
    """Build the five threads (20/200 messages with/without a 1M-row result, 1,000 messages), time
    the page's reruns (interleaved across them, so machine noise hits all alike), print the figures and
    the ratios against their targets."""
    from runs import fresh_home  # benchmarks/runs.py: a temporary CFO_DESK_HOME, restored after

    cases = [(20, False), (20, True), (200, False), (200, True), (1000, False)]
    with fresh_home():
        pages, built, cold = {}, {}, {}
        for case in cases:
            started = time.perf_counter()
            ids = _thread(*case)
            built[case] = time.perf_counter() - started
            pages[case], cold[case] = _open(*ids)
        samples: dict = {case: [] for case in cases}
        for _ in range(RERUNS):
            for case in cases:
                started = time.perf_counter()
                pages[case].run()
                samples[case].append(time.perf_counter() - started)
        figures = {case: statistics.median(samples[case]) for case in cases}
        for case in cases:
            at = pages[case]
            if at.exception:
                raise RuntimeError(at.exception)
            shown = max((len(df.value) for df in at.dataframe), default=0)
            messages, big = case
            label = f"{messages} messages" + (", one 1M-row result" if big else "")
            print(f"chat rerun, {label}: rerun median {figures[case] * 1e3:.0f} ms of {RERUNS} (first run {cold[case] * 1e3:.0f} ms; "
                  f"largest table shows {shown:,} rows; thread built in {built[case]:.1f} s)")
    for messages in (20, 200):
        ratio = figures[messages, True] / figures[messages, False]
        print(f"chat rerun, {messages} messages, with vs without a 1M-row result: ratio {ratio:.2f} (target <= 1.2)")
    print(f"chat rerun, 200 messages: {figures[200, False] * 1e3:.0f} ms (target < 500 ms); "
          f"200 vs 20 messages: ratio {figures[200, False] / figures[20, False]:.2f}")
    print(f"chat rerun, 1,000 messages: {figures[1000, False] * 1e3:.0f} ms, first run {cold[1000, False] * 1e3:.0f} ms (target < 1 s; "
          f"the page draws the last 40 messages); 1,000 vs 20 messages: ratio {figures[1000, False] / figures[20, False]:.2f}")


if __name__ == "__main__":
    main()
