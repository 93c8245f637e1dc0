"""Small formatting helpers for the UI: inert text, sizes, hashes, numbers, table column formats.

Public names:
- `safe_markdown(text)`: untrusted Markdown (answers, clarifications, assumptions, errors, notes, user
  messages) made inert for Streamlit's Markdown renderer, ordinary formatting kept.
- `safe_label(text)`: untrusted text for one-line places (button, metric, expander, status, popover
  and tab labels, help tooltips, titles, captions built from names): shown literally, one line.
- `safe_code(name)`: a name (table, column) as inline code when it is a plain identifier, else as
  `safe_label` text.
- `human_bytes`, `short_hash`, `figure`, `for_display`, `column_config`: display formats.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pandas as pd
import streamlit as st

__all__ = ["column_config", "figure", "for_display", "human_bytes", "safe_code", "safe_label", "safe_markdown", "short_hash"]

# Every string that came from a model, a file, a column name or a user goes through safe_markdown,
# safe_label or safe_code before it reaches Streamlit. Streamlit renders Markdown (react-markdown + GFM) in
# st.markdown, captions, alerts, titles, and in the labels and help of buttons, metrics, expanders,
# status boxes and popovers; a Markdown image there is fetched by the analyst's browser on render,
# so a prompt injected through an uploaded cell could send figures to any server.
#
# The rules are context-free: they hold wherever the text lands (paragraph, list, table cell, code
# span, code block), because they remove the characters that start a dangerous construct instead
# of parsing Markdown. Inside code the only cost is a visible "\" or "&lt;" in the rare code that
# contains these character pairs.
#   1. `![`          -> `!\[`     no image of any form (inline, reference, collapsed, shortcut)
#   2. `](` and `]:` -> `]\(` `]\:`  no inline link, no reference definition (so no reference resolves)
#   3. `<` before a letter, `/`, `!`, `?` or an e-mail -> `&lt;`  no HTML, no autolink
#   4. `http://`, `https://`, `www.`, `x@y.z` get a zero-width space (U+200B) after the scheme, `www`
#      or `@`: GFM's autolink-literal transform works on decoded text, so escapes don't stop it.
# Before them, a best-effort pass rewrites the well-formed cases readably: images become
# "[image removed: alt]", links "text (url)", autolinks their URL, reference definitions and HTML
# tags disappear. That pass may miss odd variants; the four rules above never do.
ZWSP = "\u200b"

_IMAGE_INLINE = re.compile(r"!\[((?:[^\[\]\n]|\[[^\[\]\n]*\])*)\][ \t]*(?:\n[ \t]*)?\((?:[^()\n]|\([^()\n]*\))*\)")
_IMAGE_REF = re.compile(r"!\[((?:[^\[\]\n]|\[[^\[\]\n]*\])*)\](?:[ \t]*\[[^\[\]\n]*\])?")
_LINK_INLINE = re.compile(r"(?<![!\\])\[((?:[^\[\]\n]|\[[^\[\]\n]*\])*)\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)")
_REF_DEFINITION = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*(?:\n[ \t]*)?\S+.*$", re.MULTILINE)
_AUTOLINK = re.compile(r"<((?:[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*)|(?:[^\s<>@]+@[^\s<>@]+))>")
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_HTML_RAW = re.compile(r"<(script|style|svg|math|iframe|object|template|noscript)\b.*?(?:</\1\s*>|$)", re.IGNORECASE | re.DOTALL)
# Known HTML elements only: a placeholder such as <table_name> in prose stays (rule 3 shows it as text).
_HTML_TAG = re.compile(
    r"</?(?:a|abbr|area|audio|b|base|basefont|bgsound|big|blink|blockquote|body|br|button|canvas|center|code|col|details|div|em|embed|"
    r"font|form|frame|frameset|h[1-6]|head|hr|html|i|iframe|image|img|input|isindex|keygen|li|link|map|marquee|meta|object|ol|p|param|"
    r"picture|pre|s|small|source|span|strike|strong|sub|summary|sup|table|tbody|td|th|thead|title|tr|track|tt|u|ul|video|wbr)"
    r"(?=[\s/>])(?:[^<>]*)>",
    re.IGNORECASE,
)

_ANGLE = re.compile(r"<(?=[A-Za-z/!?]|[^\s<>]*@)")
_IMAGE_OPEN = re.compile(r"!\[")
_LINK_TAIL = re.compile(r"\]([(:])")
_URL_LITERAL = re.compile(r"(?i)(https?)(?=:/)|(www)(?=\.)")
_EMAIL_AT = re.compile(r"@(?=[-\w])")

# Label text: characters that start inline Markdown or Streamlit syntax anywhere in a line
# (code, emphasis, strikethrough, links and directives, HTML, entities, math, :shortcodes:, tables),
# and the block markers that count only at the start of a line.
_LABEL_PUNCT = re.compile(r"([\\`*_~\[\]<>&$:|])")
_LABEL_BLOCK_START = re.compile(r"^(\s*)([#>+=-]|\d+(?=[.)]))")
# Streamlit replaces `:material/name:` and `:streamlit:` in decoded text, after escapes are undone:
# a zero-width space after a colon that precedes a letter keeps them literal.
_LABEL_COLON = re.compile(r":(?=[A-Za-z])")


def _readable(text: str) -> str:
    """The best-effort pass: well-formed images, links, definitions and HTML rewritten readably."""
    text = _HTML_COMMENT.sub("", text)
    text = _HTML_RAW.sub("", text)
    text = _REF_DEFINITION.sub("", text)
    alt = lambda m: f"[image removed: {m.group(1).strip()}]" if m.group(1).strip() else "[image removed]"  # noqa: E731
    text = _IMAGE_INLINE.sub(alt, text)
    text = _IMAGE_REF.sub(alt, text)
    text = _LINK_INLINE.sub(lambda m: f"{m.group(1)} ({m.group(2)})" if m.group(2) and m.group(2) != m.group(1) else m.group(1), text)
    text = _AUTOLINK.sub(lambda m: m.group(1), text)
    return _HTML_TAG.sub("", text)


def _inert(text: str) -> str:
    """The four context-free rules (see above)."""
    text = _ANGLE.sub("&lt;", text)
    text = _IMAGE_OPEN.sub(r"!\\[", text)
    text = _LINK_TAIL.sub(lambda m: "]\\" + m.group(1), text)
    text = _URL_LITERAL.sub(lambda m: (m.group(1) or m.group(2)) + ZWSP, text)
    return _EMAIL_AT.sub("@" + ZWSP, text)


def safe_markdown(text: str | None) -> str:
    """Untrusted Markdown made inert for Streamlit: no image, link, autolink or HTML can render.

    Bold, italics, lists, headings, tables, code and colours stay. Images become
    "[image removed: alt]", links their text and URL (not clickable), HTML tags disappear.
    """
    return _inert(_readable(str(text or "")))


def safe_label(text: str | None) -> str:
    """Untrusted text for a one-line place, shown literally: newlines become spaces and every
    character that would start Markdown or Streamlit syntax (emphasis, code, links, images, HTML,
    entities, math, :icons:) is backslash-escaped, `:name` gets a zero-width space after the colon
    (Streamlit swaps `:material/x:` for an icon even when escaped); URLs and e-mails are not linked."""
    line = " ".join(str(text or "").split())
    line = _URL_LITERAL.sub(lambda m: (m.group(1) or m.group(2)) + ZWSP, line)
    line = _EMAIL_AT.sub("@" + ZWSP, line)
    line = _LABEL_PUNCT.sub(r"\\\1", line)
    line = _LABEL_COLON.sub(":" + ZWSP, line)
    return _LABEL_BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2) if not m.group(2).isdigit() else m.group(1) + m.group(2) + "\\", line)


def safe_code(name: str | None) -> str:
    """A table or column name as inline code when it is a plain ASCII identifier (what ingest makes),
    else escaped like a label: a backtick in a name can't break out of the code span."""
    name = str(name or "")
    return f"`{name}`" if name and name.isascii() and name.replace("_", "").isalnum() else safe_label(name)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KB'."""
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def short_hash(sha256: str) -> str:
    """The first 8 hex digits of a sha256, as shown next to datasets."""
    return f"sha256 {sha256[:8]}"


def figure(value: float, unit: str) -> str:
    """A key figure for display: '$312,109.50' style for currencies, '12.5%' for %, else grouped."""
    unit_l = (unit or "").strip()
    symbols = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
    if unit_l.upper() in symbols:
        sign = "-" if value < 0 else ""
        return f"{sign}{symbols[unit_l.upper()]}{abs(value):,.2f}"
    if unit_l == "%":
        return f"{value:,.1f}%"
    if float(value).is_integer():
        return f"{value:,.0f} {unit_l}".strip()
    return f"{value:,.2f} {unit_l}".strip()


def for_display(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with exact DECIMAL columns (Python Decimal objects) as float64, so they get number
    formats in the grid. Downloads keep the exact values: this is for display only."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            sample = out[col].dropna()
            if len(sample) and all(isinstance(v, Decimal) for v in sample.head(100)):
                out[col] = out[col].astype("float64")
    return out


def column_config(df: pd.DataFrame) -> dict:
    """Streamlit column formats: thousands separators for numbers, 2 decimals for floats, ISO dates."""
    config = {}
    for col in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[col]):
            times = df[col].dropna()
            whole_days = bool(len(times)) and bool((times == times.dt.normalize()).all())
            config[col] = (
                st.column_config.DateColumn(format="YYYY-MM-DD") if whole_days else st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")
            )
        elif pd.api.types.is_float_dtype(df[col]):
            config[col] = st.column_config.NumberColumn(format="localized", step=0.01)
        elif pd.api.types.is_integer_dtype(df[col]) and not str(col).lower().endswith(("id", "year")):
            config[col] = st.column_config.NumberColumn(format="localized")
    return config
