"""CFO Desk: a Streamlit desk where a CFO agent answers finance questions with SQL over your exports."""

__version__ = "0.1.0"
