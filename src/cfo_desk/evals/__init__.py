"""The evaluation suite: questions a SaaS CFO asks of the sample workspace, with ground truth.

`cases.py` holds the cases (question, reference DuckDB SQL, expected figures with unit and
tolerance, the finance definition used and its source) and computes their truth with pandas from
the sample CSV files. `oracle.py` is a scripted model that answers a case with its reference SQL.
`run.py` runs the cases through the app's own turn path (`services.turns.ask`) as a
pydantic-evals Dataset and writes the report (JSON and Markdown). `cfo-desk eval` is the command.
"""
