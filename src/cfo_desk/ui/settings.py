"""The Settings page: what the app is configured with (read-only; set through env or .env)."""

from __future__ import annotations

import streamlit as st
from sqlalchemy.engine import make_url

from cfo_desk.config import get_settings
from cfo_desk.services.turns import asking_problem


def render() -> None:
    """Draw the Settings page."""
    s = get_settings()
    st.title("Settings")
    st.caption("Set these in the environment or a .env file next to app.py, then restart.")
    problem = asking_problem()
    if problem:
        st.warning(problem)
    else:
        st.success(f"Model ready: {s.model or 'test override'}")
    url = make_url(s.db_url).render_as_string(hide_password=True)
    st.table(
        {
            "Setting": ["CFO_DESK_MODEL", "CFO_DESK_HOME", "DATABASE_URL", "CFO_DESK_SQL_TIMEOUT", "CFO_DESK_SQL_ROWS_TO_MODEL", "CFO_DESK_SQL_RESULT_ROW_LIMIT", "CFO_DESK_REQUEST_LIMIT", "CFO_DESK_TOOL_CALLS_LIMIT"],
            "Value": [s.model or "(not set)", str(s.home), url, f"{s.cfo_desk_sql_timeout:g} s", f"{s.cfo_desk_sql_rows_to_model:,} rows", f"{s.cfo_desk_sql_result_row_limit:,} rows", str(s.cfo_desk_request_limit), str(s.cfo_desk_tool_calls_limit)],
        }
    )
