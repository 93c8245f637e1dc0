"""Charts and workbooks on a page: drawn from their kept spec and files, never by re-running SQL."""

from __future__ import annotations

import streamlit as st

from cfo_desk.services.artifacts import Artifact
from cfo_desk.ui.format import safe_label


def draw(art: Artifact, *, key: str) -> None:
    """Draw a chart or workbook artifact with its downloads; `key` makes widget keys unique."""
    st.warning(safe_label(f"{art.handle} ({art.kind}) can't be shown by this version of CFO Desk."))
