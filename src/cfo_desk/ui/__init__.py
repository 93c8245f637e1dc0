"""Streamlit components and renderers: the only package besides app.py and pages/ that imports streamlit."""
