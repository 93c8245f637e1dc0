"""Persistence: SQLModel tables, engine and sessions, workspace folders and artifact files."""
