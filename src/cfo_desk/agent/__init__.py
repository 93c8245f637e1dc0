"""The CFO agent: pydantic-ai agent, its tools over the sandboxed DuckDB, outputs, turn runner."""
