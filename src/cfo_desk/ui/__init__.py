"""Streamlit components and renderers: the only package besides app.py and views/ that imports streamlit."""
