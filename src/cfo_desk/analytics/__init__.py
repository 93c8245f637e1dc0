"""Per-workspace DuckDB: ingest, the sandboxed read connection, profiles, sample data."""
