"""Alembic migrations of the server schema (the schema's source of truth)."""
