"""Deliverables the CFO agent builds: Excel workbooks with live formulas, charts."""
