"""Query results on a page: the first rows of each (read once per session) and a full CSV download.

A result can have 1,000,000 rows. Pages never load or send all of them: they show the first
PREVIEW_ROWS rows, read from the start of the result's Parquet file once per artifact per session
(a committed result file never changes), and build the full CSV only when its download is clicked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import pandas as pd
import pyarrow as pa
import streamlit as st

from cfo_desk.services import artifacts as artifacts_svc
from cfo_desk.services.artifacts import Artifact
from cfo_desk.services.session import open_session
from cfo_desk.ui.format import column_config, for_display, safe_label

PREVIEW_ROWS = 500
"""Rows of a result a page shows; the CSV download has all of them."""
MAX_CACHED_PREVIEWS = 256
"""Previews a session keeps besides those the current run draws (least recently drawn go first)."""
_PREVIEWS = "_result_previews"  # session_state: OrderedDict {(artifact id, file path): Preview}


@dataclass(frozen=True)
class Table:
    """A result's first rows, ready to draw on every rerun without further work: the data as
    Arrow (converted from pandas once; st.dataframe then only serialises it), its column formats,
    and how many rows it holds."""

    data: pa.Table | pd.DataFrame
    config: dict
    rows: int


Preview = Table | str
"""A result's first rows ready to draw, or a sentence saying why they can't be shown."""


def previews(arts: Iterable[Artifact]) -> dict[int, Preview]:
    """{artifact id: its first PREVIEW_ROWS rows (display-ready), or why they can't be shown}.

    Each artifact's file is read at most once per session: previews live in session state, keyed
    by artifact id. The cache keeps every preview asked for in this call plus up to
    MAX_CACHED_PREVIEWS others, least recently used first out, so a page showing more results than
    the bound still never re-reads one it drew on the last rerun. Never raises for a missing or
    unreadable file (the sentence says what went wrong).
    """
    cache: OrderedDict[tuple[int, str], Preview] = st.session_state.setdefault(_PREVIEWS, OrderedDict())
    arts = list(arts)
    missing = [a for a in arts if _cache_key(a) not in cache]
    if missing:
        with open_session() as session:
            for art in missing:
                cache[_cache_key(art)] = _read_preview(session, art)
    out = {}
    for art in arts:
        cache.move_to_end(_cache_key(art))
        out[art.id] = cache[_cache_key(art)]
    while len(cache) > max(MAX_CACHED_PREVIEWS, len(out)):
        cache.popitem(last=False)
    return out


def _cache_key(art: Artifact) -> tuple[int, str]:
    # The file path (it holds the run's uuid) too: a store may reuse a deleted artifact's id.
    return (art.id, art.file_path)


def _read_preview(session, art: Artifact) -> Preview:
    try:
        frame = for_display(artifacts_svc.result_head(session=session, artifact=art, rows=PREVIEW_ROWS))
    except Exception as exc:  # a missing or unreadable file must not take the page down
        return f"The result of {art.handle} can't be shown: {exc}"
    try:
        data = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):  # a column Arrow can't take back: Streamlit converts it
        data = frame
    return Table(data, column_config(frame), len(frame))


def shown_rows_caption(art: Artifact, preview: Table) -> str | None:
    """"Showing the first N of M rows…" when the preview holds fewer rows than the result; else None."""
    if preview.rows >= art.row_count:
        return None
    return f"Showing the first {preview.rows:,} of {art.row_count:,} rows. The CSV download has all of them."


def result_table(art: Artifact, preview: Preview, *, key: str) -> None:
    """Draw a result's preview (or why it can't be shown) with a caption when rows are left out.
    `key` makes the dataframe's key unique on the page."""
    if isinstance(preview, str):
        st.warning(safe_label(preview))
        return
    st.dataframe(preview.data, hide_index=True, column_config=preview.config, key=key)
    caption = shown_rows_caption(art, preview)
    if caption:
        st.caption(caption)


def download_button(art: Artifact, *, label: str, file_name: str, key: str, container=st) -> None:
    """A CSV download of the whole result (every row, formula-like text escaped). The CSV is built
    only when the button is clicked (`data` is a callable), never on a rerun; the click itself
    doesn't rerun the page."""
    container.download_button(
        label,
        data=partial(artifacts_svc.result_csv, art.id),
        file_name=file_name,
        mime="text/csv",
        key=key,
        icon=":material/download:",
        on_click="ignore",
    )
