"""Small formatting helpers for the UI: sizes, hashes, numbers, table column formats."""

from __future__ import annotations

import re
from decimal import Decimal

import pandas as pd
import streamlit as st


_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_HTML_IMG = re.compile(r"<\s*img\b[^>]*>", re.IGNORECASE)


def safe_markdown(text: str) -> str:
    """Model-written Markdown with images removed (their alt text kept).

    An image URL would be fetched by the analyst's browser on render, so a prompt injected through an
    uploaded cell could send figures to any server: no model-written image is ever rendered.
    """
    return _HTML_IMG.sub("", _IMAGE.sub(lambda m: f"[image removed: {m.group(1)}]" if m.group(1) else "[image removed]", text or ""))


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
