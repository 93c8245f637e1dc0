"""What the app is configured with, for the Settings page (read-only; passwords hidden)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from cfo_desk.config import get_settings


def configuration() -> list[tuple[str, str]]:
    """(environment variable, value as shown) for every setting; DATABASE_URL without its password."""
    s = get_settings()
    return [
        ("CFO_DESK_MODEL", s.model or "(not set)"),
        ("CFO_DESK_HOME", str(s.home)),
        ("DATABASE_URL", make_url(s.db_url).render_as_string(hide_password=True)),
        ("CFO_DESK_SQL_TIMEOUT", f"{s.cfo_desk_sql_timeout:g} s"),
        ("CFO_DESK_SQL_ROWS_TO_MODEL", f"{s.cfo_desk_sql_rows_to_model:,} rows"),
        ("CFO_DESK_SQL_RESULT_ROW_LIMIT", f"{s.cfo_desk_sql_result_row_limit:,} rows"),
        ("CFO_DESK_REQUEST_LIMIT", f"{s.cfo_desk_request_limit:,} requests"),
        ("CFO_DESK_TOOL_CALLS_LIMIT", f"{s.cfo_desk_tool_calls_limit:,} tool calls"),
        ("CFO_DESK_TOTAL_TOKENS_LIMIT", f"{s.cfo_desk_total_tokens_limit:,} tokens"),
    ]
