"""Run the evaluation suite through the app's own turn path and report on it.

`run_suite(model)` loads the sample workspace (`services.samples.load_sample_workspace`) into a
private data home with its own SQLite store (a temporary folder unless `home` is given, so the
analyst's workspaces are never touched), builds a pydantic-evals `Dataset` of the cases, and runs
each case's question in a new thread of that workspace through `services.turns.ask` (run queue,
agent, sandboxed SQL, artifacts), as the app would. Evaluators score the reply:

- `Answered`: the reply is a final answer (a clarification, or a failed/stopped turn, fails).
- `FiguresMatch`: every expected figure is matched by a distinct key figure of the answer whose
  value is within the figure's tolerance (`match_figures`). A '%' truth matches an answer given
  as a percentage (12.5) or, leniently, as a ratio (0.125). Labels and units are not compared.
- `Mentions`: the answer's text names what the case requires (e.g. the top customer's id).

A case passes when all of them pass. `SuiteReport` holds per case the question, pass/fail, the
expected and answered figures, the SQL run, tokens and seconds, plus totals; `write()` saves it as
`eval-report.json` and `eval-report.md`.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic_ai.models import Model
from pydantic_evals import Case, Dataset
from pydantic_evals.evaluators import EvaluationReason, Evaluator, EvaluatorContext

from cfo_desk.evals.cases import CASES, EvalCase, ExpectedFigure, expected_figures, sample_frames

__all__ = [
    "AnsweredFigure",
    "CaseInput",
    "CaseOutcome",
    "CaseResult",
    "FigureMatch",
    "SuiteReport",
    "build_dataset",
    "match_figures",
    "private_home",
    "run_suite",
]

REPORT_JSON = "eval-report.json"
REPORT_MD = "eval-report.md"


# ---------------------------------------------------------------------------------------------
# What a case's task produces, and how figures are matched


@dataclass(frozen=True)
class CaseInput:
    """The task's input: the case name (for progress and the report) and the question asked."""

    name: str
    question: str


@dataclass
class AnsweredFigure:
    """A key figure as the answer gave it (`value` in `unit`); `trace` as the app's tie-out set it
    (a dict like FigureTrace, or None when the app recorded none)."""

    label: str
    value: float
    unit: str
    query: str | None = None
    column: str | None = None
    trace: dict[str, Any] | None = None


@dataclass
class CaseOutcome:
    """What one turn produced: the reply's status (ok, clarification, failed, stopped, ...), its
    text, key figures, the queries it ran ({handle, sql, row_count}), tokens, and seconds (the
    run's wall time as the app recorded it)."""

    status: str
    answer: str
    figures: list[AnsweredFigure] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    seconds: float | None = None
    model_name: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class FigureMatch:
    """One expected figure and the answered figure matched to it (None: no key figure within the
    tolerance); `as_ratio` when a '%' truth was matched by a ratio (0.125 for 12.5%)."""

    expected: ExpectedFigure
    answered: AnsweredFigure | None
    as_ratio: bool = False

    @property
    def ok(self) -> bool:
        return self.answered is not None


def _fits(exp: ExpectedFigure, value: float) -> tuple[bool, bool]:
    """(matches, as a ratio): `value` within the tolerance of the truth; for '%', also value × 100."""
    slack = 1e-9 * max(1.0, abs(exp.value))  # float noise only
    if abs(value - exp.value) <= exp.tolerance + slack:
        return True, False
    if exp.unit == "%" and abs(100 * value - exp.value) <= exp.tolerance + slack:
        return True, True
    return False, False


def match_figures(expected: Sequence[ExpectedFigure], answered: Sequence[AnsweredFigure]) -> list[FigureMatch]:
    """Match each expected figure to a distinct answered figure within its tolerance.

    A maximum bipartite matching (augmenting paths; a few figures per case), so two equal truths
    need two key figures and a greedy pick can't starve a later figure. Returns one FigureMatch
    per expected figure, in order."""
    fits = [[j for j, a in enumerate(answered) if _fits(e, a.value)[0]] for e in expected]
    owner: dict[int, int] = {}  # answered index -> expected index

    def augment(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(expected)):
        augment(i, set())
    by_expected = {i: j for j, i in owner.items()}
    out = []
    for i, e in enumerate(expected):
        j = by_expected.get(i)
        a = answered[j] if j is not None else None
        out.append(FigureMatch(e, a, _fits(e, a.value)[1] if a is not None else False))
    return out


# ---------------------------------------------------------------------------------------------
# Evaluators (pydantic-evals)


@dataclass
class Answered(Evaluator[CaseInput, CaseOutcome, dict]):
    """Passes when the turn ended with a final answer (status ok)."""

    def evaluate(self, ctx: EvaluatorContext[CaseInput, CaseOutcome, dict]) -> EvaluationReason:
        out = ctx.output
        if out.status == "ok":
            return EvaluationReason(True)
        return EvaluationReason(False, f"the turn ended {out.status}: {(out.error or out.answer)[:300]}")


@dataclass
class FiguresMatch(Evaluator[CaseInput, CaseOutcome, dict]):
    """Passes when every expected figure is matched within its tolerance (`match_figures`)."""

    def evaluate(self, ctx: EvaluatorContext[CaseInput, CaseOutcome, dict]) -> EvaluationReason:
        matches = match_figures(ctx.expected_output or [], ctx.output.figures)
        missing = [m.expected for m in matches if not m.ok]
        if not missing:
            return EvaluationReason(True, f"{len(matches)} of {len(matches)} figures matched")
        text = "; ".join(f"{e.label}: expected {_num(e.value)} {e.unit} ± {e.tolerance:g}" for e in missing)
        return EvaluationReason(False, f"{len(matches) - len(missing)} of {len(matches)} figures matched; missing {text}")


@dataclass
class Mentions(Evaluator[CaseInput, CaseOutcome, dict]):
    """Passes when the answer's text contains each of the case's required words (case-insensitive)."""

    def evaluate(self, ctx: EvaluatorContext[CaseInput, CaseOutcome, dict]) -> EvaluationReason:
        words = (ctx.metadata or {}).get("mentions") or []
        absent = [w for w in words if w.lower() not in ctx.output.answer.lower()]
        return EvaluationReason(not absent, f"not mentioned: {', '.join(absent)}" if absent else None)


def build_dataset(cases: Sequence[EvalCase] = CASES) -> Dataset[CaseInput, CaseOutcome, dict]:
    """The pydantic-evals Dataset of `cases`: inputs CaseInput, expected_output the figures with
    their pandas truth, metadata the definition, reference SQL and required mentions."""
    frames = sample_frames()
    return Dataset(
        name="cfo-desk-sample-saas",
        cases=[
            Case(
                name=c.name,
                inputs=CaseInput(c.name, c.question),
                expected_output=expected_figures(c, frames),
                metadata={
                    "definition": c.definition,
                    "reference_sql": c.sql,
                    "mentions": list(c.mentions(frames)) if c.mentions else [],
                },
            )
            for c in cases
        ],
        evaluators=[Answered(), FiguresMatch(), Mentions()],
    )


# ---------------------------------------------------------------------------------------------
# Running the cases through the app


@contextmanager
def private_home(home: Path | None = None) -> Iterator[Path]:
    """Point this process's settings at `home` with a SQLite store inside it for the block.

    `home` None: a new temporary folder, removed afterwards. `CFO_DESK_HOME` and `DATABASE_URL`
    are set in the environment (so the store and workspaces live there, whatever `.env` says)
    and restored on exit; the settings cache and store engines are reset both ways."""
    from cfo_desk.storage.db import switched_environment

    tmp = tempfile.TemporaryDirectory(prefix="cfo-desk-eval-") if home is None else None
    root = Path(tmp.name if tmp else home).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with switched_environment(CFO_DESK_HOME=str(root), DATABASE_URL=f"sqlite:///{root / 'cfo_desk.db'}"):
            yield root
    finally:
        if tmp is not None:
            tmp.cleanup()


def _outcome(session, reply) -> CaseOutcome:
    from cfo_desk.services.artifacts import artifacts_by_message

    output = reply.output or {}
    figures = [
        AnsweredFigure(
            label=str(k.get("label", "")),
            value=float(k["value"]),
            unit=str(k.get("unit", "")),
            query=k.get("query"),
            column=k.get("column"),
            trace=k.get("trace"),
        )
        for k in output.get("key_figures") or []
        if k.get("value") is not None
    ]
    arts = artifacts_by_message(session=session, message_ids=[reply.id]).get(reply.id, [])
    return CaseOutcome(
        status=str(getattr(reply.status, "value", reply.status)),
        answer=reply.content or "",
        figures=figures,
        queries=[{"handle": a.handle, "title": a.title, "sql": a.sql, "row_count": a.row_count} for a in arts],
        input_tokens=reply.input_tokens,
        output_tokens=reply.output_tokens,
        seconds=reply.duration_s,
        model_name=reply.model_name,
        error=reply.error,
    )


def make_task(workspace_id: int, model: Model | str, on_case: Callable[[CaseInput, CaseOutcome], None] | None = None):
    """The pydantic-evals task: ask the case's question in a new thread of the workspace."""
    from cfo_desk.services import threads, turns
    from cfo_desk.services.session import open_session

    def task(inp: CaseInput) -> CaseOutcome:
        with open_session() as session:
            thread = threads.create_thread(session=session, workspace_id=workspace_id, title=f"eval: {inp.name}")
            reply = turns.ask(session=session, thread_id=thread.id, content=inp.question, model=model)
            outcome = _outcome(session, reply)
        if on_case is not None:
            on_case(inp, outcome)
        return outcome

    return task


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class CaseResult:
    """One case in the report. `figures` pairs each expected figure with the answered one matched
    to it; `answered` lists every key figure of the answer; `assertions` maps evaluator name to
    {passed, reason}."""

    name: str
    question: str
    definition: str
    passed: bool
    status: str
    assertions: dict[str, dict[str, Any]]
    figures: list[dict[str, Any]]
    answered: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    reference_sql: str
    input_tokens: int | None
    output_tokens: int | None
    seconds: float | None
    error: str | None = None


@dataclass
class SuiteReport:
    """The suite's result: per case (`CaseResult`) and totals. Seconds are the runs' own wall
    times (`Message.duration_s`) summed; `wall_seconds` is the whole suite, workspace load included."""

    model: str
    started_at: str
    cases: list[CaseResult]
    wall_seconds: float

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def pass_rate(self) -> float:
        return self.passed / len(self.cases) if self.cases else 0.0

    def totals(self) -> dict[str, Any]:
        """cases, passed, failed, pass_rate (0..1), input/output tokens, seconds, wall_seconds, and
        the answers' key figures by tie-out trace: traced, not_traced, untraced (no trace recorded)."""
        traces = [(a.get("trace") or {}).get("status") for c in self.cases for a in c.answered]
        return {
            "cases": len(self.cases),
            "passed": self.passed,
            "failed": len(self.cases) - self.passed,
            "pass_rate": round(self.pass_rate, 4),
            "input_tokens": sum(c.input_tokens or 0 for c in self.cases),
            "output_tokens": sum(c.output_tokens or 0 for c in self.cases),
            "seconds": round(sum(c.seconds or 0 for c in self.cases), 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "figures_traced": traces.count("traced"),
            "figures_not_traced": traces.count("not_traced"),
            "figures_without_trace": traces.count(None),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "started_at": self.started_at,
            "totals": self.totals(),
            "cases": [asdict(c) for c in self.cases],
        }

    def to_markdown(self) -> str:
        """The report as Markdown: totals, a table of cases, then per case its question, definition,
        expected vs answered figures (with their tie-out trace) and the SQL run. Text that came from
        the model (labels, errors, SQL) is escaped or fenced, so it renders as text."""
        t = self.totals()
        lines = [
            "# CFO Desk evaluation report",
            "",
            f"Model `{_md(self.model)}`, started {self.started_at}. "
            f"**{t['passed']} of {t['cases']} cases passed ({100 * self.pass_rate:.1f}%).** "
            f"Tokens in/out: {t['input_tokens']:,} / {t['output_tokens']:,}. "
            f"Run seconds: {t['seconds']:.1f} (suite wall time {t['wall_seconds']:.1f} s). "
            f"Key figures tied out to a result cell: {t['figures_traced']}, not traced: {t['figures_not_traced']}.",
            "",
            "| case | result | figures matched | tokens in/out | seconds |",
            "|---|---|---|---|---|",
        ]
        for c in self.cases:
            ok = sum(f["matched"] for f in c.figures)
            lines.append(
                f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {ok}/{len(c.figures)} | "
                f"{c.input_tokens or 0:,} / {c.output_tokens or 0:,} | {c.seconds or 0:.2f} |"
            )
        for c in self.cases:
            lines += ["", f"## {c.name}: {'pass' if c.passed else 'FAIL'}", "", f"**Question.** {c.question}", ""]
            lines += [f"**Definition.** {c.definition}", ""]
            if c.status != "ok" or c.error:
                lines += [f"**Turn:** {c.status}" + (f": {_md(c.error)}" if c.error else ""), ""]
            for name, a in c.assertions.items():
                if not a["passed"]:
                    lines.append(f"- {name} failed: {_md(a.get('reason') or '')}")
            lines += ["", "| expected figure | expected | tolerance | answered | trace |", "|---|---|---|---|---|"]
            for f in c.figures:
                got = f"{_num(f['answered_value'])} ({_md(f['answered_label'])})" if f["matched"] else "—"
                lines.append(
                    f"| {f['label']} | {_num(f['expected'])} {f['unit']} | ± {f['tolerance']:g} | {got} | {_md(f.get('trace') or '')} |"
                )
            extra = [a for a in c.answered if not a["matched"]]
            if extra:
                lines += ["", "Other key figures of the answer: " + "; ".join(
                    f"{_md(a['label'])} = {_num(a['value'])} {_md(a['unit'])}" + (f" ({_md(_trace_text(a['trace']))})" if a["trace"] else "")
                    for a in extra
                )]
            for q in c.queries:
                fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", q["sql"])), default=0))
                lines += ["", f"SQL run ({_md(q['handle'])}, {q['row_count']} rows):", "", fence + "sql", q["sql"], fence]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """Write eval-report.json and eval-report.md into `out_dir` (created); returns their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        js, md = out_dir / REPORT_JSON, out_dir / REPORT_MD
        js.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")
        md.write_text(self.to_markdown(), encoding="utf-8")
        return js, md


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|!#&])")


def _md(text: object) -> str:
    """Untrusted text as one literal line of Markdown (every markup character escaped)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _num(value: float) -> str:
    """A number with thousands separators and up to 4 decimals (trailing zeros dropped)."""
    text = f"{value:,.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _trace_text(trace: dict[str, Any] | None) -> str | None:
    if not trace:
        return None
    if trace.get("status") == "traced":
        return f"✓ {trace.get('handle')} row {trace.get('row')} column {trace.get('column')}"
    return f"✗ not traced: {trace.get('reason') or ''}"


def _case_result(case: EvalCase, rc: Any, failure: Any) -> CaseResult:
    """A CaseResult from a pydantic-evals ReportCase (`rc`) or ReportCaseFailure (`failure`)."""
    expected: list[ExpectedFigure] = (rc or failure).expected_output or []
    base = dict(name=case.name, question=case.question, definition=case.definition, reference_sql=case.sql)
    if rc is None:
        figures = [dict(label=e.label, expected=e.value, unit=e.unit, tolerance=e.tolerance, matched=False) for e in expected]
        return CaseResult(
            **base, passed=False, status="error", assertions={}, figures=figures, answered=[], queries=[],
            input_tokens=None, output_tokens=None, seconds=None, error=failure.error_message,
        )
    out: CaseOutcome = rc.output
    matches = match_figures(expected, out.figures)
    matched_ids = {id(m.answered) for m in matches if m.ok}
    figures = []
    for m in matches:
        row: dict[str, Any] = dict(label=m.expected.label, expected=m.expected.value, unit=m.expected.unit,
                                   tolerance=m.expected.tolerance, matched=m.ok)
        if m.answered is not None:
            row.update(answered_label=m.answered.label, answered_value=m.answered.value, answered_unit=m.answered.unit,
                       as_ratio=m.as_ratio, query=m.answered.query, column=m.answered.column, trace=_trace_text(m.answered.trace))
        figures.append(row)
    assertions = {name: {"passed": bool(r.value), "reason": r.reason} for name, r in rc.assertions.items()}
    evaluator_errors = [f"{e.name}: {e.error_message}" for e in rc.evaluator_failures]
    return CaseResult(
        **base,
        passed=bool(assertions) and all(a["passed"] for a in assertions.values()) and not evaluator_errors,
        status=out.status,
        assertions=assertions,
        figures=figures,
        answered=[{**asdict(a), "matched": id(a) in matched_ids} for a in out.figures],
        queries=out.queries,
        input_tokens=out.input_tokens,
        output_tokens=out.output_tokens,
        seconds=out.seconds,
        error=out.error or ("; ".join(evaluator_errors) or None),
    )


def run_suite(
    model: Model | str,
    *,
    cases: Sequence[EvalCase] = CASES,
    home: Path | None = None,
    out_dir: Path | None = None,
    concurrency: int = 1,
    on_case: Callable[[CaseInput, CaseOutcome], None] | None = None,
) -> SuiteReport:
    """Run `cases` on `model` (a pydantic-ai Model such as the oracle, or a model string) through
    `services.turns.ask` over a freshly loaded sample workspace in a private home (`private_home`;
    temporary unless `home` is given); up to `concurrency` turns at once. Writes the report into
    `out_dir` when given. `on_case` hears each case's outcome as it finishes (progress)."""
    from cfo_desk.services.samples import load_sample_workspace
    from cfo_desk.services.session import open_session

    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    model_name = model if isinstance(model, str) else getattr(model, "model_name", type(model).__name__)
    dataset = build_dataset(cases)
    with private_home(home):
        with open_session() as session:
            ws = load_sample_workspace(session=session)
            ws_id = ws.id
        report = dataset.evaluate_sync(
            make_task(ws_id, model, on_case), name=f"cfo-desk eval ({model_name})", max_concurrency=concurrency, progress=False,
        )
    by_name = {c.name: c for c in cases}
    done = {rc.name: rc for rc in report.cases}
    failed = {f.name: f for f in report.failures}
    results = [_case_result(c, done.get(c.name), failed.get(c.name)) for c in by_name.values()]
    suite = SuiteReport(model=str(model_name), started_at=started_at, cases=results, wall_seconds=time.perf_counter() - started)
    if out_dir is not None:
        suite.write(out_dir)
    return suite
