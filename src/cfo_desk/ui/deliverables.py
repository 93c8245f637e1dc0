"""Charts and workbooks on a page, drawn from what their artifact keeps, never by re-running SQL.

A chart is re-drawn from its spec and the result file it reads (at most 5,000 rows); a workbook is
shown from the preview computed when it was built (`<name>.preview.json` beside the .xlsx), so a
page never runs the formula engine. Each is prepared at most once per artifact per session
(session state, least recently drawn first out), and PNG, SVG and .xlsx downloads are built only
when clicked.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services.artifacts import Artifact, ChartRefused, chart_png, chart_svg
from cfo_desk.services.session import open_session
from cfo_desk.ui.format import safe_label, safe_markdown

MAX_CACHED = 64
"""Prepared charts and workbook previews a session keeps (least recently drawn go first)."""
_CACHE = "_deliverables"  # session_state: OrderedDict {(artifact id, file path): Prepared | str}


@dataclass(frozen=True)
class _Chart:
    chart: Any  # an Altair chart
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Workbook:
    sheets: list[dict]
    computed: bool
    engine_note: str | None


def _prepare(art: Artifact) -> _Chart | _Workbook | str:
    """Read what drawing `art` needs (once per session), or a sentence saying why it can't be shown."""
    try:
        with open_session() as session:
            if art.kind == "chart":
                chart, notes = artifacts_svc.chart_of(session=session, artifact=art)
                return _Chart(chart, tuple(notes))
            if art.kind == "workbook":
                preview = artifacts_svc.workbook_preview(session=session, artifact=art)
                return _Workbook(preview["sheets"], bool(preview["computed"]), preview.get("engine_note"))
    except ChartRefused as exc:
        return f"Chart {art.handle} can't be drawn from its kept result any more: {exc.reason}"
    except Exception as exc:  # a missing or unreadable file must not take the page down
        return f"{art.handle} can't be shown: {exc}"
    return f"{art.handle} is a {art.kind}, which this version of CFO Desk can't show."


def _prepared(art: Artifact) -> _Chart | _Workbook | str:
    cache: OrderedDict = st.session_state.setdefault(_CACHE, OrderedDict())
    key = (art.id, art.file_path)
    if key not in cache:
        cache[key] = _prepare(art)
    cache.move_to_end(key)
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return cache[key]


def draw(art: Artifact, *, key: str) -> None:
    """Draw a chart or workbook artifact with its downloads; `key` makes widget keys unique."""
    got = _prepared(art)
    with st.container(border=True):
        icon = ":material/bar_chart:" if art.kind == "chart" else ":material/grid_on:"
        st.markdown(f"{icon} **{safe_label(art.handle)} · {safe_label(art.title)}**")
        if isinstance(got, str):
            st.warning(safe_label(got))
        elif isinstance(got, _Chart):
            _chart(art, got, key)
        else:
            _workbook(art, got, key)


def _chart(art: Artifact, got: _Chart, key: str) -> None:
    st.altair_chart(got.chart, width="stretch", key=f"{key}_chart")
    for note in got.notes:
        st.caption(safe_markdown(note))
    row = st.container(horizontal=True)
    row.download_button(
        "PNG", data=partial(chart_png, got.chart), file_name=f"{art.handle}.png", mime="image/png",
        key=f"{key}_png", icon=":material/download:", on_click="ignore",
    )
    row.download_button(
        "SVG", data=partial(chart_svg, got.chart), file_name=f"{art.handle}.svg", mime="image/svg+xml",
        key=f"{key}_svg", icon=":material/download:", on_click="ignore",
    )


def sheet_frame(sheet: dict) -> pd.DataFrame:
    """A previewed sheet as a DataFrame: rows numbered as in Excel, columns named A, B, C ..."""
    from openpyxl.utils import get_column_letter

    rows = sheet["rows"]
    width = max((len(r) for r in rows), default=0)
    return pd.DataFrame(
        [[None if v is None else str(v) for v in r] + [None] * (width - len(r)) for r in rows],
        index=range(1, len(rows) + 1),
        columns=[get_column_letter(j + 1) for j in range(width)],
    )


def _workbook(art: Artifact, got: _Workbook, key: str) -> None:
    if not got.computed:
        st.caption(safe_label(f"Formula values are not shown here: {got.engine_note or 'not computed'}. Excel computes them on opening."))
    tabs = st.tabs([safe_label(s["name"]) for s in got.sheets])
    for i, (tab, sheet) in enumerate(zip(tabs, got.sheets, strict=True)):
        with tab:
            st.dataframe(sheet_frame(sheet), key=f"{key}_sheet_{i}")
            if sheet.get("more_rows") or sheet.get("more_cols"):
                st.caption("Only the top-left corner of this sheet is shown; the download has all of it.")
            formulas = sheet.get("formulas") or {}
            if formulas:
                ref = st.selectbox(
                    "Formula behind a cell", options=list(formulas), key=f"{key}_formula_{i}",
                    format_func=lambda r, f=formulas: f"{r}: {f[r][:60]}",  # options are plain text, not Markdown
                )
                if ref:
                    st.code(formulas[ref], language="text", wrap_lines=True)
    st.download_button(
        "Download .xlsx", data=partial(artifacts_svc.artifact_bytes, art.id),
        file_name=f"{art.handle}-{''.join(c for c in art.title[:40] if c.isalnum() or c in ' -_').strip().replace(' ', '_') or 'workbook'}.xlsx",
        mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", key=f"{key}_xlsx",
        icon=":material/download:", on_click="ignore",
    )
