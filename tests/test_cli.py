"""The `cfo-desk` command through subprocesses: ingest, ask and eval. Models are the oracle or the
stub OpenAI-compatible server on 127.0.0.1; no real provider is ever called."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stub_openai import StubOpenAIServer

from cfo_desk.analytics.sample_data import write_sample_files
from cfo_desk.cli import main

TIMEOUT_S = 120


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m cfo_desk.cli ARGS` with this test's environment (its CFO_DESK_HOME) plus `env`."""
    return subprocess.run(
        [sys.executable, "-m", "cfo_desk.cli", *args],
        capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT_S, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def sample_files(tmp_path) -> dict[str, Path]:
    return {p.name: p for p in write_sample_files(tmp_path / "sample")}


def _acme(session, sample_files) -> None:
    """Workspace "Acme" holding customers.csv, loaded in this process (quicker than a subprocess)."""
    from cfo_desk.services.datasets import upload_file
    from cfo_desk.services.workspaces import create_workspace

    ws = create_workspace(session=session, name="Acme")
    path = sample_files["customers.csv"]
    upload_file(session=session, workspace_id=ws.id, filename=path.name, data=path.read_bytes())


def _workspaces(session) -> dict[str, list[str]]:
    from cfo_desk.services.datasets import list_datasets
    from cfo_desk.services.workspaces import list_workspaces

    return {w.name: [d.table_name for d in list_datasets(session=session, workspace_id=w.id)] for w in list_workspaces(session=session)}


def test_ingest_creates_the_workspace_and_reports_each_table(sample_files, tmp_path, session):
    run = cli("ingest", "Acme", str(sample_files["customers.csv"]), str(sample_files["orders.csv"]))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "Created workspace Acme."
    assert "customers.csv -> table customers: 597 rows, 7 columns" in lines
    assert any(line.startswith("orders.csv -> table orders: 8,498 rows, 7 columns") for line in lines)
    assert "  columns: customer_id VARCHAR, company_name VARCHAR, segment VARCHAR" in run.stdout

    messy = tmp_path / "bank.csv"
    messy.write_text("Statement for Acme\ndate,amount\n2024-01-31,\"$1,234.50\"\n2024-02-29,(20.00)\nTotal,\"$1,214.50\"\n", encoding="utf-8")
    bad = tmp_path / "broken.csv"
    bad.write_text('a,b\n1,2,3,4\n"x\n', encoding="utf-8")
    again = cli("ingest", "acme", str(messy), str(bad))  # the name matches in any case
    assert again.returncode == 1
    assert "bank.csv -> table bank: 2 rows, 2 columns" in again.stdout
    assert "  note: " in again.stdout  # what ingest did (title line, total row) is said
    err = again.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cfo-desk: broken.csv: row 2 has 4 fields") and "Traceback" not in again.stderr
    assert _workspaces(session) == {"Acme": ["bank", "customers", "orders"]}  # nothing of broken.csv


def test_ingest_asks_before_it_replaces_a_file(sample_files, session, capsys):
    """Error paths run in-process (main()); the subprocess tests cover the command as installed."""
    assert main(["ingest", "Acme", str(sample_files["customers.csv"])]) == 0
    assert main(["ingest", "Acme", str(sample_files["customers.csv"])]) == 1
    assert "pass --replace or --keep-both" in capsys.readouterr().err
    assert main(["ingest", "Acme", str(sample_files["customers.csv"]), "--replace"]) == 0
    assert main(["ingest", "Acme", str(sample_files["customers.csv"]), "--keep-both"]) == 0
    assert _workspaces(session) == {"Acme": ["customers", "customers_2"]}


def test_a_bad_first_file_leaves_no_workspace_behind(tmp_path, session, home, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert main(["ingest", "Fresh", str(empty)]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == "cfo-desk: empty.csv: the file is empty." and out == ""
    assert main(["ingest", "Fresh", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err
    assert _workspaces(session) == {}
    assert [p.name for p in home.iterdir() if p.name.startswith("ws-")] == []


ANSWER = {
    "answer_markdown": "SMB has **351** customers (q1).",
    "key_figures": [
        {"label": "SMB customers", "value": 351, "unit": "customers", "query": "q1", "column": "customers"},
        {"label": "Made-up figure", "value": 999, "unit": "customers", "query": "q1", "column": "customers"},
    ],
    "queries": ["q1"],
}
SEGMENT_SQL = "SELECT segment, count(*) AS customers FROM customers GROUP BY segment ORDER BY segment"


@pytest.fixture
def model_requests(monkeypatch):
    """Let this process reach the stub server (only 127.0.0.1 is ever called)."""
    from pydantic_ai import models

    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)


@pytest.fixture
def stub(monkeypatch):
    """The stub model server (its policy reads STUB_* from this process's environment)."""
    with StubOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def test_ask_prints_the_answer_figures_with_their_trace_tables_and_sql(sample_files, stub, model_requests, monkeypatch, session, capsys):
    _acme(session, sample_files)
    monkeypatch.setenv("STUB_SQL", SEGMENT_SQL)
    monkeypatch.setenv("STUB_ANSWER_JSON", json.dumps(ANSWER))

    run = cli("ask", "Acme", "How many customers per segment?", "--model", "openai-chat:stub-model")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.startswith("SMB has **351** customers (q1).")
    assert "  SMB customers: 351 customers   ✓ q1 row 2 column customers" in out
    assert "  Made-up figure: 999 customers   ✗ not traced: " in out
    assert "q1 · Revenue by month · 3 rows" in out  # the stub's purpose is the result's title
    table = out.split("q1 · Revenue by month · 3 rows\n")[1].split("SQL:")[0].splitlines()
    assert table[0].split() == ["segment", "customers"] and table[1].split() == ["Enterprise", "80"] and table[3].split() == ["SMB", "351"]
    assert f"SQL:\n  {SEGMENT_SQL}\n" in out
    footer = out.strip().splitlines()[-1]
    assert footer.startswith("thread 1 · openai-chat:stub-model · ") and "tokens in/out" in footer
    assert "… run_sql: Revenue by month" in run.stderr  # progress goes to stderr

    assert main(["ask", "Acme", "And per region?", "--thread", "1", "--model", "openai-chat:stub-model"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("thread 1 · ")
    from cfo_desk.services.threads import conversation

    assert [m.content for m in conversation(session=session, thread_id=1)][::2] == ["How many customers per segment?", "And per region?"]


def test_ask_prints_at_most_20_rows_and_says_how_many_are_left(sample_files, stub, model_requests, monkeypatch, session, capsys):
    _acme(session, sample_files)
    monkeypatch.setenv("STUB_SQL", "SELECT customer_id, signup_date FROM customers ORDER BY customer_id")
    assert main(["ask", "Acme", "List the customers", "--model", "openai-chat:stub-model"]) == 0
    out = capsys.readouterr().out
    assert "C0020" in out and "C0021" not in out
    assert "… 577 more rows in the workspace" in out
    assert "Key figures" not in out  # the stub's default answer has none


def test_ask_without_a_model_or_workspace_says_what_to_do(stub, capsys):
    assert main(["ask", "Nowhere", "What was MRR?", "--model", "openai-chat:stub-model"]) == 2
    assert "no workspace named 'Nowhere'" in capsys.readouterr().err
    assert main(["ask", "Nowhere", "What was MRR?"]) == 2
    assert "CFO_DESK_MODEL" in capsys.readouterr().err


def test_a_failed_turn_exits_non_zero_with_the_readable_error(sample_files, stub, model_requests, monkeypatch, session, capsys):
    _acme(session, sample_files)
    monkeypatch.setenv("OPENAI_API_KEY", "bad-key")  # the stub answers 401
    assert main(["ask", "Acme", "What was MRR?", "--model", "openai-chat:stub-model"]) == 1
    err = capsys.readouterr().err
    assert "rejected the API key" in err and "Traceback" not in err


def test_eval_with_the_oracle_passes_and_writes_the_report(tmp_path, home):
    out = tmp_path / "report"
    run = cli("eval", "--oracle", "--case", "mrr_2024_12", "--case", "nrr_2024_by_segment", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS mrr_2024_12" in run.stdout and "PASS nrr_2024_by_segment" in run.stdout
    assert "2/2 passed (100.0%)" in run.stdout
    data = json.loads((out / "eval-report.json").read_text(encoding="utf-8"))
    assert data["totals"]["pass_rate"] == 1.0 and [c["name"] for c in data["cases"]] == ["mrr_2024_12", "nrr_2024_by_segment"]
    assert (out / "eval-report.md").read_text(encoding="utf-8").startswith("# CFO Desk evaluation report")
    assert not home.exists() or not any(home.iterdir())  # the analyst's home was never touched


def test_eval_with_a_model_string_runs_the_suite_and_reports_its_failures(tmp_path, stub, monkeypatch, home):
    """The stub answers every question with SELECT 42: the case fails, and the report says why."""
    out = tmp_path / "report"
    run = cli("eval", "--model", "openai-chat:stub-model", "--case", "mrr_2024_12", "--out", str(out))
    assert run.returncode == 1
    assert "FAIL mrr_2024_12 — 0 of 1 figures matched" in run.stdout and "0/1 passed (0.0%)" in run.stdout
    data = json.loads((out / "eval-report.json").read_text(encoding="utf-8"))
    (case,) = data["cases"]
    assert data["model"] == "openai-chat:stub-model" and case["passed"] is False and case["status"] == "ok"
    assert case["queries"][0]["sql"] == "SELECT 42 AS answer"
    assert case["input_tokens"] > 0 and case["output_tokens"] > 0 and case["seconds"] > 0
    assert data["totals"]["input_tokens"] == case["input_tokens"]
    assert len(stub.requests) >= 3  # list_tables, run_sql, the answer
    assert not home.exists() or not any(home.iterdir())


def test_eval_refuses_unknown_cases_and_a_missing_model(capsys):
    assert main(["eval", "--oracle", "--case", "nope"]) == 2
    assert "No case named 'nope'" in capsys.readouterr().err
    assert main(["eval"]) == 2
    err = capsys.readouterr().err
    assert "CFO_DESK_MODEL" in err and "--oracle" in err
    assert main(["eval", "--list"]) == 0
    assert "nrr_2024: NRR = " in capsys.readouterr().out
