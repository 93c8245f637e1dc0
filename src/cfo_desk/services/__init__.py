"""Typed service functions called by the UI: `f(*, session, ...)`; no Streamlit below this line."""
