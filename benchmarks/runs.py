"""Benchmarks of background runs (the run queue + worker), printing ratios. Called by run.py
(`make bench`); also runs alone: `.venv/bin/python benchmarks/runs.py`.

4. Overhead per turn, zero-latency scripted model (one run_sql SELECT 1, then the answer), each
   turn in a fresh thread, the three ways interleaved:
   (a) in the script: add the question, plan_turn + run_agent (blocking) + record_reply + commit,
       no run row or lease (the pre-background way);
   (b) `turns.ask`: enqueue + claim (lease) + execute inline on the calling thread;
   (c) enqueue + `wake_worker()` + the process's background worker, timed from the enqueue to the
       run's committed end as the page sees it (polling the store every POLL_S).
   Also (c) without wake_worker (as when another process enqueued): bounded by CFO_DESK_RUN_POLL_S.
5. Concurrency: 10 threads of one workspace ask at once (10 Python threads enqueue together), the
   model thinks 1 s per request (2 requests per turn), at CFO_DESK_RUNS_PER_PROCESS=4, 8 (the default) and 10; wall
   time to all answered vs the ideal 2 s, the most runs seen running at once, and peak RSS. Each
   setting runs in a fresh subprocess so its peak RSS is its own.
6. Thread depth: the background path's per-turn time with 1 vs 50 prior turns in the thread (each
   measured turn asks in a fresh fork of the shallow or deep thread, so the depth stays fixed).
   Target: ratio ~1. The in-script way at the same depths is the reference: replaying a longer
   history to the model costs something on any path.

Every scenario has its own temporary CFO_DESK_HOME (SQLite store inside). No real model is called.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pydantic_ai import models  # noqa: E402

models.ALLOW_MODEL_REQUESTS = False  # FunctionModel only; no provider is ever called

POLL_S = 0.002  # how often the benchmark re-reads a run's status (the page polls far less often)
OVERHEAD_TURNS = 30
NO_WAKE_TURNS = 6
BURST_THREADS = 10
BURST_DELAY_S = 1.0
DEPTH_SHALLOW, DEPTH_DEEP, DEPTH_TURNS = 1, 50, 15
SCENARIO_ENV = ("CFO_DESK_HOME", "DATABASE_URL", "CFO_DESK_RUNS_PER_PROCESS", "CFO_DESK_RUN_POLL_S")


@contextmanager
def fresh_home(**env: str) -> Iterator[Path]:
    """A temporary CFO_DESK_HOME (SQLite store inside) with `env` set; restores everything after
    (worker stopped, engines closed, settings re-read, model override cleared, folder removed)."""
    from cfo_desk.agent.core import use_model
    from cfo_desk.services import worker
    from cfo_desk.storage.db import switched_environment

    tmp = Path(tempfile.mkdtemp(prefix="cfo-bench-runs-"))
    values = {"DATABASE_URL": None, "CFO_DESK_HOME": str(tmp / "home")} | env
    try:
        with switched_environment(**values):
            try:
                yield tmp
            finally:
                worker.shutdown_worker()
                use_model(None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wait_closed(run_ids: list[int], timeout_s: float = 120.0) -> list:
    """Poll the store every POLL_S until none of these runs is queued or running; returns the rows."""
    from sqlmodel import select

    from cfo_desk.services.runs import OPEN
    from cfo_desk.storage.db import session_scope
    from cfo_desk.storage.models import Run

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope() as s:
            rows = list(s.exec(select(Run).where(Run.id.in_(run_ids))))
            if len(rows) == len(run_ids) and all(r.status not in OPEN for r in rows):
                return rows
        time.sleep(POLL_S)
    raise RuntimeError(f"runs {run_ids} still open after {timeout_s} s")


def _answered(rows: list) -> None:
    from cfo_desk.storage.models import RunStatus

    bad = [(r.id, r.status, r.error) for r in rows if r.status != RunStatus.done or r.reply_message_id is None]
    if bad:
        raise RuntimeError(f"runs ended without an answer: {bad}")


def in_script_turn(session, thread_id: int, model) -> None:
    """(a) The pre-background way: question, plan, blocking agent run, reply, one commit."""
    from cfo_desk.agent.runner import run_agent
    from cfo_desk.services import turns

    msg = turns.add_user_message(session=session, thread_id=thread_id, content="What is one?")
    plan = turns.plan_turn(session=session, thread_id=thread_id, user_message_id=msg.id)
    outcome = run_agent(prompt=plan.prompt, deps=plan.deps, history=plan.history, model=model, usage_limits=plan.usage_limits)
    if outcome.error:
        raise RuntimeError(outcome.error)
    turns.record_reply(
        session=session, thread_id=thread_id, user_message_id=msg.id, outcome=outcome, run_rel=plan.run_rel, datasets=plan.datasets
    )
    session.commit()


def inline_turn(session, thread_id: int, model) -> None:
    """(b) `turns.ask`: queue + lease + inline execution through the worker's code."""
    from cfo_desk.services import turns
    from cfo_desk.storage.models import MessageStatus

    reply = turns.ask(session=session, thread_id=thread_id, content="What is one?", model=model)
    if reply.status != MessageStatus.ok:
        raise RuntimeError(reply.content)


def background_turn(session, workspace_id: int, thread_id: int, wake: bool = True) -> None:
    """(c) Enqueue (+ wake the worker, as the page does), then wait for the committed end."""
    from cfo_desk.services import runs, worker

    run = runs.enqueue_question(session=session, workspace_id=workspace_id, thread_id=thread_id, content="What is one?")
    if wake:
        worker.wake_worker()
    _answered(wait_closed([run.id]))


def bench_overhead() -> None:
    from agent_script import sql_script

    from cfo_desk.agent.core import use_model
    from cfo_desk.config import get_settings
    from cfo_desk.services import threads, workspaces, worker
    from cfo_desk.storage.db import session_scope

    with fresh_home(), session_scope() as s:
        model = sql_script(["SELECT 1 AS one"], {"answer_markdown": "One."})
        use_model(model)  # the background worker runs on the configured model
        ws = workspaces.create_workspace(session=s, name="bench overhead")
        worker.start_worker()
        ways = {
            "a": lambda tid: in_script_turn(s, tid, model),
            "b": lambda tid: inline_turn(s, tid, model),
            "c": lambda tid: background_turn(s, ws.id, tid),
        }
        samples: dict[str, list[float]] = {k: [] for k in ways}
        for i in range(OVERHEAD_TURNS + 2):  # 2 warm-up rounds, then interleaved so all see the same store and machine
            for key, turn in ways.items():
                tid = threads.create_thread(session=s, workspace_id=ws.id).id
                t0 = time.perf_counter()
                turn(tid)
                if i >= 2:
                    samples[key].append(time.perf_counter() - t0)
        poll = get_settings().cfo_desk_run_poll_s
        no_wake = []
        phase = random.Random(7)
        for _ in range(NO_WAKE_TURNS):
            tid = threads.create_thread(session=s, workspace_id=ws.id).id
            time.sleep(phase.uniform(0, poll))  # ask at a random point of the worker's poll cycle, not right after its last run
            t0 = time.perf_counter()
            background_turn(s, ws.id, tid, wake=False)
            no_wake.append(time.perf_counter() - t0)

    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}

    def spread(k: str) -> str:
        q = statistics.quantiles(samples[k], n=4)
        return f"median {med[k]:.1f} ms (IQR {q[0] * 1e3:.1f}-{q[2] * 1e3:.1f}, max {max(samples[k]) * 1e3:.1f})"

    print(f"runs overhead, {OVERHEAD_TURNS} turns each, zero-latency model doing 1 run_sql:")
    print(f"  (a) in script (plan + run_agent + record_reply + commit): {spread('a')}")
    print(f"  (b) turns.ask inline (queue + lease + inline run):        {spread('b')}, ratio b/a {med['b'] / med['a']:.2f}")
    print(f"  (c) enqueue + wake_worker + background worker:            {spread('c')}, ratio c/a {med['c'] / med['a']:.2f}")
    print(
        f"  (c) without wake_worker (another process enqueued), {NO_WAKE_TURNS} turns: median {statistics.median(no_wake) * 1e3:.0f} ms, "
        f"max {max(no_wake) * 1e3:.0f} ms (CFO_DESK_RUN_POLL_S={poll:g} s: expect (c) + 0..{poll * 1e3:.0f} ms)"
    )


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB: VmRSS and VmHWM from /proc/self/status.

    Not resource.getrusage's ru_maxrss: Linux carries a process's ru_maxrss over fork and exec, so
    in this subprocess it would report `make bench`'s own peak (the 1M-row fork benchmark)."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def burst(per_process: int) -> dict:
    """Scenario 5 for one CFO_DESK_RUNS_PER_PROCESS setting (run in its own process)."""
    from agent_script import sql_script

    from cfo_desk.agent.core import use_model
    from cfo_desk.services import runs, threads, workspaces, worker
    from cfo_desk.storage.db import session_scope

    with fresh_home(CFO_DESK_RUNS_PER_PROCESS=str(per_process)):
        use_model(sql_script(["SELECT 1 AS one"], {"answer_markdown": "One."}, delay_s=BURST_DELAY_S))
        with session_scope() as s:
            ws = workspaces.create_workspace(session=s, name="bench burst")
            tids = [threads.create_thread(session=s, workspace_id=ws.id).id for _ in range(BURST_THREADS)]
            # warm-up turn (agent built, DuckDB loaded), so the burst measures runs, not imports
            worker.start_worker()
            warm = runs.enqueue_question(session=s, workspace_id=ws.id, thread_id=None, content="warm up")
            worker.wake_worker()
            wait_closed([warm.id])
        rss_before, peak_before = _rss_mb()
        gate = threading.Barrier(BURST_THREADS + 1)
        run_ids: list[int] = []
        errors: list[BaseException] = []

        def ask(tid: int) -> None:
            try:
                gate.wait()
                with session_scope() as s:
                    run_ids.append(runs.enqueue_question(session=s, workspace_id=ws.id, thread_id=tid, content="What is one?").id)
                worker.wake_worker()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        askers = [threading.Thread(target=ask, args=(tid,)) for tid in tids]
        for a in askers:
            a.start()
        gate.wait()
        t0 = time.perf_counter()
        for a in askers:
            a.join()
        if errors:
            raise errors[0]
        rows = wait_closed(run_ids)
        wall = time.perf_counter() - t0
        _answered(rows)
        events = sorted([(r.started_at, 1) for r in rows] + [(r.finished_at, -1) for r in rows], key=lambda e: (e[0], e[1]))
        running = most = 0
        for _, d in events:
            running += d
            most = max(most, running)
        rss_after, peak = _rss_mb()
    return {
        "per_process": per_process,
        "wall_s": wall,
        "answered": len(rows),
        "most_at_once": most,
        "rss_before_mb": rss_before,
        "peak_before_mb": peak_before,
        "rss_after_mb": rss_after,
        "peak_rss_mb": peak,
    }


def bench_concurrency() -> None:
    ideal = 2 * BURST_DELAY_S
    print(f"runs concurrency: {BURST_THREADS} threads ask at once, model {BURST_DELAY_S:g} s per request x 2 requests (ideal {ideal:.1f} s):")
    for n in (4, 8, BURST_THREADS):  # 8 is the default
        out = subprocess.run(
            [sys.executable, __file__, "--burst", str(n)], check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        waves = -(-BURST_THREADS // n)
        print(
            f"  CFO_DESK_RUNS_PER_PROCESS={n:>2}: {r['answered']}/{BURST_THREADS} answered in {r['wall_s']:.2f} s = {r['wall_s'] / ideal:.2f}x ideal "
            f"({waves} wave(s): {waves * ideal:.0f} s expected), at most {r['most_at_once']} running at once; "
            f"RSS {r['rss_before_mb']:.0f} MB before the burst, {r['rss_after_mb']:.0f} MB after; peak RSS {r['peak_before_mb']:.0f} MB before, {r['peak_rss_mb']:.0f} MB after"
        )


def bench_depth() -> None:
    from agent_script import sql_script

    from cfo_desk.agent.core import use_model
    from cfo_desk.services import threads, turns, workspaces, worker
    from cfo_desk.storage.db import session_scope

    with fresh_home(), session_scope() as s:
        model = sql_script(["SELECT 1 AS one"], {"answer_markdown": "One."})
        use_model(model)
        ws = workspaces.create_workspace(session=s, name="bench depth")
        sources = {}
        for depth in (DEPTH_SHALLOW, DEPTH_DEEP):
            tid = threads.create_thread(session=s, workspace_id=ws.id).id
            for _ in range(depth):
                reply = turns.ask(session=s, thread_id=tid, content="What is one?", model=model)
            sources[depth] = (tid, reply.id)
        worker.start_worker()
        ways = {"c": lambda tid: background_turn(s, ws.id, tid), "a": lambda tid: in_script_turn(s, tid, model)}
        samples: dict[tuple[str, int], list[float]] = {(w, d): [] for w in ways for d in sources}
        for i in range(DEPTH_TURNS + 1):  # 1 warm-up round
            for (way, depth) in samples:
                tid, mid = sources[depth]
                fork = threads.fork_thread(session=s, thread_id=tid, message_id=mid).id  # fixed depth: a fresh fork each turn
                t0 = time.perf_counter()
                ways[way](fork)
                if i:
                    samples[way, depth].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    c1, c50, a1, a50 = (med[w, d] for w in ("c", "a") for d in (DEPTH_SHALLOW, DEPTH_DEEP))
    print(f"runs depth, {DEPTH_SHALLOW} vs {DEPTH_DEEP} prior turns in the thread (medians of {DEPTH_TURNS}):")
    print(f"  (c) background: {c1:.1f} ms vs {c50:.1f} ms, ratio {c50 / c1:.2f} (target ~1)")
    print(f"  (a) in script:  {a1:.1f} ms vs {a50:.1f} ms, ratio {a50 / a1:.2f} (reference: what the history itself costs)")
    print(f"  (c) - (a), the background path's own cost: {c1 - a1:.1f} ms vs {c50 - a50:.1f} ms (target: the same)")


def main() -> None:
    bench_overhead()
    bench_concurrency()
    bench_depth()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--burst":
        print(json.dumps(burst(int(sys.argv[2]))))
    else:
        main()
