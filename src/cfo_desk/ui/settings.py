"""The Settings page: what the app is configured with (read-only; set through env or .env)."""

from __future__ import annotations

import streamlit as st

from cfo_desk.services.settings import configuration
from cfo_desk.services.turns import asking_problem


def render() -> None:
    """Draw the Settings page."""
    st.title("Settings")
    st.caption("Set these in the environment or a .env file next to app.py, then restart.")
    problem = asking_problem()
    if problem:
        st.warning(problem)
    else:
        st.success("A model is configured: questions can be asked.")
    rows = configuration()
    st.table({"Setting": [k for k, _ in rows], "Value": [v for _, v in rows]})
