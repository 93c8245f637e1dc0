"""The `cfo-desk` command: the app's services without the browser.

    cfo-desk ingest WORKSPACE FILE...            load CSV/XLSX files (the workspace is created when missing)
    cfo-desk ask WORKSPACE "question" [--thread ID] [--model STR]
                                                 ask the CFO agent; prints the answer, its key figures with
                                                 their tie-out trace, the result tables and their SQL
    cfo-desk eval [--model STR | --oracle] [--out DIR] [--case NAME]... [--home DIR] [--concurrency N]
                                                 run the evaluation suite (src/cfo_desk/evals) and write its
                                                 report (eval-report.json, eval-report.md)
    cfo-desk worker                              execute queued runs from the store until stopped

`ingest`, `ask` and `worker` use the same settings as the app (`CFO_DESK_HOME`, `DATABASE_URL`,
`CFO_DESK_MODEL`, provider keys; `.env` in the working folder). `eval` loads the sample workspace
into a temporary data home with its own SQLite store (or `--home DIR`), so it never touches the
analyst's workspaces; its exit status is 0 when every case passed, 1 otherwise.

Exit statuses: 0 done; 1 the work failed (a file that can't be read, a failed turn, a failing
eval case); 2 the command can't start (bad arguments, unknown workspace, no usable model).

A worker process shares the store (`DATABASE_URL`, normally PostgreSQL for several processes)
and the data home (`CFO_DESK_HOME`) with the app processes. Every app process runs a worker of
its own too; a separate worker adds capacity, or keeps runs going while app processes restart.
Each run is claimed by exactly one worker (the thread lease in services/runs.py).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import make_url

from cfo_desk.config import get_settings

MAX_TABLE_ROWS = 20
"""Rows of each result table `cfo-desk ask` prints (the full result stays in the workspace)."""
MAX_TABLE_COLUMNS = 20
MAX_CELL_CHARS = 40

# Text from a model, a file or a column name reaches the terminal: no control characters (an
# escape sequence could rewrite the screen), but newlines and tabs stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _plain(text: object) -> str:
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", str(text))


def _line(text: object) -> str:
    """One line of plain text (errors, labels)."""
    return " ".join(_plain(text).split())


def _fail(message: str, status: int = 1) -> int:
    print(f"cfo-desk: {_line(message)}", file=sys.stderr, flush=True)
    return status


def _find_workspace(session, name: str):
    from cfo_desk.services.workspaces import list_workspaces

    wanted = " ".join(name.split()).casefold()
    return next((w for w in list_workspaces(session=session) if w.name.casefold() == wanted), None)


# ---------------------------------------------------------------------------------------------
# cfo-desk ingest


def _ingest(args: argparse.Namespace) -> int:
    from cfo_desk.analytics.ingest import IngestError
    from cfo_desk.services.datasets import DuplicateUpload, upload_file
    from cfo_desk.services.errors import ServiceError
    from cfo_desk.services.session import open_session
    from cfo_desk.services.workspaces import create_workspace, delete_workspace

    paths = [Path(p) for p in args.files]
    for p in paths:  # every file is readable before anything is written
        if not p.is_file():
            return _fail(f"{p}: no such file", 2)
    on_conflict = "replace" if args.replace else "keep_both" if args.keep_both else "ask"
    with open_session() as session:
        ws, created = _find_workspace(session, args.workspace), False
        if ws is None:
            try:
                ws, created = create_workspace(session=session, name=args.workspace), True
            except ServiceError as exc:
                return _fail(str(exc), 2)
        loaded = 0
        for p in paths:
            try:
                datasets = upload_file(session=session, workspace_id=ws.id, filename=p.name, data=p.read_bytes(), on_conflict=on_conflict)
            except (ServiceError, IngestError, OSError) as exc:
                message = str(exc)
                if isinstance(exc, DuplicateUpload):
                    message = f"{p.name} was uploaded before (as {', '.join(d.table_name for d in exc.existing)}); pass --replace or --keep-both"
                elif isinstance(exc, OSError):
                    message = f"{p}: {exc.strerror or exc}"
                if created and loaded == 0:  # leave no empty workspace behind
                    delete_workspace(session=session, workspace_id=ws.id)
                elif loaded:
                    message += f" (the {loaded} file(s) before it are loaded)"
                return _fail(message)
            loaded += 1
            if created and loaded == 1:
                print(f"Created workspace {_line(ws.name)}.")
            for d in datasets:
                sheet = f" [{d.sheet_name}]" if d.sheet_name else ""
                print(f"{_line(p.name)}{_line(sheet)} -> table {_line(d.table_name)}: {d.row_count:,} rows, {len(d.columns)} columns")
                print("  columns: " + ", ".join(f"{_line(c['name'])} {_line(c['type'])}" for c in d.columns))
                for note in d.notes:
                    print(f"  note: {_line(note)}")
    return 0


# ---------------------------------------------------------------------------------------------
# cfo-desk ask


def _number(value: float, unit: str) -> str:
    unit = (unit or "").strip()
    if unit == "%":
        return f"{value:,.4f}".rstrip("0").rstrip(".") + "%"
    text = f"{value:,.2f}" if re.fullmatch(r"[A-Z]{3}", unit) else f"{value:,.4f}".rstrip("0").rstrip(".")
    return f"{text} {unit}".strip()


def trace_text(trace: dict | None) -> str:
    """`✓ q1 row 0 column mrr_usd` for a traced figure, `✗ not traced: <reason>` otherwise, and ''
    when the answer carries no trace (answers recorded before tie-out)."""
    if not trace:
        return ""
    if trace.get("status") == "traced":
        return f"✓ {trace.get('handle')} row {trace.get('row')} column {trace.get('column')}"
    return f"✗ not traced: {trace.get('reason') or 'no matching cell'}"


def _print_progress(step) -> None:
    if step.kind == "tool_call":
        what = f": {_line(step.purpose)}" if step.purpose else ""
        print(f"… {step.tool}{what}", file=sys.stderr, flush=True)
    elif step.error:
        print(f"  {step.tool} failed: {_line(step.error)[:300]}", file=sys.stderr, flush=True)
    elif step.row_count is not None:
        print(f"  {step.row_count:,} rows", file=sys.stderr, flush=True)


def print_reply(session, reply, *, out=None) -> None:
    """Print an answer: its text, key figures with their trace, then each result (its first
    `MAX_TABLE_ROWS` rows, read from the Parquet file) with its SQL."""
    import pandas as pd

    from cfo_desk.services.artifacts import artifacts_by_message, result_head
    from cfo_desk.services.errors import NotFound

    out = out or sys.stdout
    output = reply.output or {}
    print(_plain(reply.content).rstrip(), file=out)
    figures = output.get("key_figures") or []
    if figures:
        print("\nKey figures:", file=out)
        for f in figures:
            period = f" ({_line(f['period'])})" if f.get("period") else ""
            trace = trace_text(f.get("trace"))
            value = _number(float(f["value"]), str(f.get("unit") or "")) if f.get("value") is not None else "—"
            print(f"  {_line(f.get('label', ''))}{period}: {_line(value)}" + (f"   {_line(trace)}" if trace else ""), file=out)
    for note in output.get("tie_out_notes") or []:
        print(f"  note: {_line(note)}", file=out)
    arts = artifacts_by_message(session=session, message_ids=[reply.id]).get(reply.id, [])
    shown = output.get("queries") or [a.handle for a in arts]
    for art in sorted((a for a in arts if a.handle in shown), key=lambda a: shown.index(a.handle)):
        print(f"\n{art.handle} · {_line(art.title)} · {art.row_count:,} rows", file=out)
        try:
            head = result_head(session=session, artifact=art, rows=MAX_TABLE_ROWS)
        except NotFound as exc:
            print(f"  ({_line(exc)})", file=out)
        else:
            with pd.option_context("display.width", 200):
                table = head.to_string(index=False, max_cols=MAX_TABLE_COLUMNS, max_colwidth=MAX_CELL_CHARS)
            print(_plain(table), file=out)
            if art.row_count > len(head):
                print(f"… {art.row_count - len(head):,} more rows in the workspace (the app's Artifacts page)", file=out)
        print("SQL:", file=out)
        print("\n".join("  " + line for line in _plain(art.sql).splitlines()), file=out)


def _ask(args: argparse.Namespace) -> int:
    from cfo_desk.agent.core import model_problem
    from cfo_desk.services import threads, turns
    from cfo_desk.services.errors import ServiceError
    from cfo_desk.services.session import open_session
    from cfo_desk.storage.models import MessageStatus

    model = args.model or get_settings().model
    if problem := model_problem(model):
        return _fail(problem, 2)
    with open_session() as session:
        ws = _find_workspace(session, args.workspace)
        if ws is None:
            return _fail(f"no workspace named {args.workspace!r}; load files into it with: cfo-desk ingest WORKSPACE FILE...", 2)
        try:
            if args.thread is not None:
                thread = threads.get_thread(session=session, thread_id=args.thread)
                if thread.workspace_id != ws.id:
                    return _fail(f"thread {args.thread} belongs to another workspace", 2)
            else:
                thread = threads.create_thread(session=session, workspace_id=ws.id)
            reply = turns.ask(session=session, thread_id=thread.id, content=args.question, model=model, on_progress=_print_progress)
        except ServiceError as exc:
            return _fail(str(exc), 2)
        status = MessageStatus(reply.status)
        if not status.answered:
            return _fail(f"the turn {status.value}: {reply.error or reply.content}")
        if status == MessageStatus.clarification:
            print("The agent asks:", file=sys.stdout)
        print_reply(session, reply)
        tokens = f"tokens in/out {reply.input_tokens or 0:,}/{reply.output_tokens or 0:,}"
        print(f"\nthread {thread.id} · {_line(reply.model_name or model)} · {reply.duration_s or 0:.1f} s · {tokens}")
        if status == MessageStatus.clarification:
            print(f'Answer with: cfo-desk ask {_line(ws.name)!r} "..." --thread {thread.id}')
    return 0


# ---------------------------------------------------------------------------------------------
# cfo-desk eval


def _eval(args: argparse.Namespace) -> int:
    from cfo_desk.agent.core import model_problem
    from cfo_desk.evals.cases import CASES, case_by_name

    if args.list:
        for c in CASES:
            print(f"{c.name}: {c.definition}")
        return 0
    try:
        cases = [case_by_name(n) for n in args.case] if args.case else list(CASES)
    except KeyError as exc:
        return _fail(exc.args[0], 2)
    if args.oracle:
        from cfo_desk.evals.oracle import oracle_model

        model = oracle_model(cases)
    else:
        model = args.model or get_settings().model
        if problem := model_problem(model):
            return _fail(problem + " (or pass --model STR, or --oracle)", 2)
    from cfo_desk.evals.run import run_suite

    label = "oracle" if args.oracle else model
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else Path("eval-reports") / f"{stamp}-{re.sub(r'[^A-Za-z0-9.-]+', '_', label)}"
    print(f"cfo-desk eval: {len(cases)} case(s) on {label}, up to {args.concurrency} at once", file=sys.stderr, flush=True)

    def on_case(inp, outcome) -> None:
        print(f"  {inp.name}: {outcome.status}, {len(outcome.figures)} figure(s), {outcome.seconds or 0:.1f} s", file=sys.stderr, flush=True)

    report = run_suite(model, cases=cases, home=Path(args.home) if args.home else None, out_dir=out_dir,
                       concurrency=args.concurrency, on_case=on_case)
    for c in report.cases:
        why = "" if c.passed else " — " + _line("; ".join(a["reason"] or n for n, a in c.assertions.items() if not a["passed"]) or c.error or "")
        print(f"{'PASS' if c.passed else 'FAIL'} {c.name}{why[:300]}")
    t = report.totals()
    print(
        f"{t['passed']}/{t['cases']} passed ({100 * report.pass_rate:.1f}%), tokens in/out {t['input_tokens']:,}/{t['output_tokens']:,}, "
        f"{t['seconds']:.1f} s in runs, {t['wall_seconds']:.1f} s in all"
    )
    print(f"report: {out_dir / 'eval-report.json'} and {out_dir / 'eval-report.md'}")
    return 0 if t["failed"] == 0 else 1


# ---------------------------------------------------------------------------------------------
# cfo-desk worker


def _worker(args: argparse.Namespace) -> int:
    from cfo_desk.services import worker as worker_svc
    from cfo_desk.storage.db import get_engine

    settings = get_settings()
    get_engine()  # fail early, with the store's own error, when it can't be reached; upgrades it
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    worker = worker_svc.RunWorker().start()
    url = make_url(settings.db_url).render_as_string(hide_password=True)
    print(
        f"cfo-desk worker {worker.owner}: store {url}, up to {settings.cfo_desk_runs_per_process} run(s) at once; "
        "stop with Ctrl-C or SIGTERM",
        flush=True,
    )
    done.wait()
    print("stopping: open runs are recorded as interrupted", flush=True)
    worker.shutdown(timeout=args.grace)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `cfo-desk` argument parser (subcommands ingest, ask, eval, worker)."""
    parser = argparse.ArgumentParser(prog="cfo-desk", description="CFO Desk from the command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    i = sub.add_parser("ingest", help="load CSV/XLSX files into a workspace (created when missing)")
    i.add_argument("workspace", metavar="WORKSPACE", help="workspace name")
    i.add_argument("files", metavar="FILE", nargs="+", help="CSV or XLSX files; each CSV and each worksheet becomes a table")
    same = i.add_mutually_exclusive_group()
    same.add_argument("--replace", action="store_true", help="replace the tables of a file uploaded before under the same name")
    same.add_argument("--keep-both", action="store_true", help="keep a file uploaded before under the same name and add this one beside it")
    i.set_defaults(func=_ingest)

    a = sub.add_parser("ask", help="ask the CFO agent a question about a workspace")
    a.add_argument("workspace", metavar="WORKSPACE", help="workspace name")
    a.add_argument("question", help="the question")
    a.add_argument("--thread", type=int, metavar="ID", help="continue this thread (default: a new thread)")
    a.add_argument("--model", metavar="STR", help="pydantic-ai model string (default: CFO_DESK_MODEL)")
    a.set_defaults(func=_ask)

    e = sub.add_parser("eval", help="run the evaluation suite on the sample workspace and write its report")
    which = e.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="STR", help="pydantic-ai model string (default: CFO_DESK_MODEL)")
    which.add_argument("--oracle", action="store_true", help="answer with the reference SQL (a scripted model; must score 100%%)")
    e.add_argument("--out", metavar="DIR", help="report folder (default: eval-reports/<UTC time>-<model>)")
    e.add_argument("--case", metavar="NAME", action="append", default=[], help="run only this case (repeatable; see --list)")
    e.add_argument("--list", action="store_true", help="list the cases and their definitions, then exit")
    e.add_argument("--home", metavar="DIR", help="keep the eval's workspace and store in DIR (default: a temporary folder)")
    e.add_argument("--concurrency", type=int, default=4, metavar="N", help="cases run at once (default 4)")
    e.set_defaults(func=_eval)

    w = sub.add_parser("worker", help="execute queued runs from the store until stopped")
    w.add_argument("--grace", type=float, default=15.0, help="seconds to wait for open runs to be recorded on stop (default 15)")
    w.set_defaults(func=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cfo-desk` console script; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):  # ✓/✗ and names on a terminal that can't show them
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    if getattr(args, "concurrency", 1) < 1:
        return _fail("--concurrency must be at least 1", 2)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
